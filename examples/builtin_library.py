"""Use the built-in variant library (textual IR files under ir/) and read the generated code.

Loads prefix-LM (bidirectional over a per-sequence prefix, causal after it), compiles it,
and prints the IR after every pass and the Triton kernel attngen wrote for it.
The same is available from the shell: `attngen compile prefix_lm -o out/ --print-after-all`.
"""
from __future__ import annotations

import torch

import attngen as ag
from attngen.library import builtin
from attngen.testing import relative_error


def main() -> None:
    variant = builtin("prefix_lm")
    attn = ag.compile(variant, after_each_pass=lambda name, ir: print(f"--- after {name}\n{ir}"))
    print(f"--- generated Triton ({attn.path}):\n{attn.source[:1500]}...\n")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    B, H, L, D = 2, 4, 128, 64
    q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype) for _ in range(3))
    prefix_length = torch.tensor([16, 100], device=device)
    out = attn(q, k, v, prefix_length=prefix_length)
    ref = ag.reference(variant)(q, k, v, prefix_length=prefix_length)
    print("relative error vs reference:", relative_error(out, ref))


if __name__ == "__main__":
    with torch.no_grad():
        main()
