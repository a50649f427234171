"""The built-in variant library, written in attngen's textual IR (shipped as ``attngen.ir_library``)."""
