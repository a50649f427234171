"""Code generation: KernelIR -> Triton source through the Jinja2 templates."""
