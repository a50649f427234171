"""The error a pass raises for a variant it cannot lower."""
from __future__ import annotations


class UnsupportedVariant(NotImplementedError):
    """The variant is valid IR but this version of attngen cannot compile it yet."""
