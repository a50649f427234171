"""attngen's version: its own module, below every layer, so that codegen and the runtime
(which stamp it into generated modules and cache keys) need not import the package root."""
__version__ = "0.1.0"
