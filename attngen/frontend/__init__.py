"""Frontend: trace Python score_mod / mask_mod functions into IR expressions."""
