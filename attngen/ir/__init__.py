"""The IR: variant nodes (nodes.py), their text form (text.py), the kernel IR (kernel.py)."""
