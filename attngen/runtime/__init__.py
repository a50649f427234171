"""Runtime: disk cache, module loading, validation, launch configs, tile lists, the callable."""
