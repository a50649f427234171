"""Which of a variant's runtime tensors a module owns, and whether each one is learned.

A variant names the tensors it reads at call time (``sinks``, ``decay_log``, a score_mod's
``slopes`` or bias table, a mask_mod's ``document_ids``...). In a module they fall in
three groups:

- learned: registered as ``nn.Parameter`` (trained, in ``state_dict``);
- fixed: registered as a buffer (in ``state_dict``, moved by ``.to()``, not trained);
- per call: not owned by the module; passed to ``forward`` by keyword (e.g. the batch's
  ``document_ids``).

The user says which through one mapping, ``tensors={name: value}``: an ``nn.Parameter`` value
is learned, any other tensor is fixed, a name left out is per call. Two names have defaults
because their meaning is fixed by the normalization (SEMANTICS.md): ``sinks`` (learned,
zeros, gpt-oss's initialization) and ``decay_log`` (fixed, RetNet's per-head decays).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..ir.nodes import Variant


def default_sinks(num_heads: int) -> nn.Parameter:
    """Learned per-head sink logits, zero at the start (each sink then weighs like one key scored 0)."""
    return nn.Parameter(torch.zeros(num_heads))


def default_decay_log(num_heads: int) -> torch.Tensor:
    """RetNet's fixed per-head decays gamma_h = 1 - 2^(-5 - h), as log(gamma_h) <= 0."""
    return torch.tensor([math.log1p(-(2.0 ** (-5 - h))) for h in range(num_heads)])


DEFAULTS = {"sinks": default_sinks, "decay_log": default_decay_log}
PER_HEAD = ("sinks", "decay_log")  # SEMANTICS.md: shape (Hq,)


@dataclass(frozen=True)
class TensorRoles:
    """The split of a variant's runtime tensor names (each tuple sorted)."""

    learned: tuple[str, ...]
    fixed: tuple[str, ...]
    per_call: tuple[str, ...]

    @property
    def owned(self) -> tuple[str, ...]:
        return self.learned + self.fixed


def initial_values(owner: str, variant: Variant, num_heads: int,
                   tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The tensors the module will own: the user's ``tensors`` plus the defaults of
    ``sinks`` / ``decay_log`` when the variant reads them and the user gave none."""
    if tensors is None:
        tensors = {}
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{owner}: tensors must be a mapping of name -> torch.Tensor, got {type(tensors).__name__}")
    declared = {p.name for p in variant.runtime_tensors()}
    unknown = sorted(set(tensors) - declared)
    if unknown:
        raise ValueError(f"{owner}: tensors names {', '.join(map(repr, unknown))}, which variant "
                         f"'{variant.label}' does not read at run time (it reads: "
                         f"{', '.join(sorted(declared)) or 'none'})")
    values: dict[str, torch.Tensor] = {}
    for name in sorted(declared):
        if name in tensors:
            value = tensors[name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{owner}: tensors[{name!r}] must be a torch.Tensor (an nn.Parameter to learn "
                                f"it), got {type(value).__name__}")
            if name in PER_HEAD and tuple(value.shape) != (num_heads,):
                raise ValueError(f"{owner}: tensors[{name!r}] must have shape ({num_heads},) (one per query head), "
                                 f"got {tuple(value.shape)}")
            values[name] = value
        elif name in DEFAULTS:
            values[name] = DEFAULTS[name](num_heads)
    return values


def register(owner: str, module: nn.Module, variant: Variant, values: Mapping[str, torch.Tensor]) -> TensorRoles:
    """Register ``values`` on ``module`` under their own names (parameters or buffers) and
    return the roles of every runtime tensor of ``variant``."""
    for name in values:
        if hasattr(module, name):
            raise ValueError(f"{owner}: variant tensor {name!r} would shadow the module's attribute of that name; "
                             "rename the tensor in the score_mod / mask_mod")
    learned, fixed = [], []
    for name, value in sorted(values.items()):
        if isinstance(value, nn.Parameter):
            module.register_parameter(name, value)
            learned.append(name)
        else:
            module.register_buffer(name, value)
            fixed.append(name)
    per_call = sorted(p.name for p in variant.runtime_tensors() if p.name not in values)
    return TensorRoles(tuple(learned), tuple(fixed), tuple(per_call))
