"""Jinja2 templates of the generated Triton kernels (shipped as ``attngen.templates``)."""
