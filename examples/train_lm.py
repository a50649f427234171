"""Train a small decoder LM whose layers alternate sliding-window-with-sinks and causal
attention (gpt-oss's pattern), with attngen and with the SDPA / FlexAttention equivalent.

    python examples/train_lm.py                        # GPU: 6 layers, width 512, bf16, compiled
    python examples/train_lm.py --device cpu --steps 3 # CPU: tiny sizes, float32, eager
    python examples/train_lm.py --backend attngen flex --out /tmp/lm

Every backend trains the same model (attngen.nn.Attention; the peers only swap its core, see
training_peers.py) from the same initial weights on the same batches:

- attngen: ``ag.Variant(mask=ag.sliding_window(W - 1), norm=ag.softmax(sink=True))`` with
  learned per-head sinks, and ``ag.Variant(mask=ag.causal())``;
- sdpa: causal layers through SDPA (is_causal), window layers through FlexAttention (SDPA
  has no sinks; Flex's lse gives them: out * sigmoid(lse - sink));
- flex: every layer through FlexAttention.

The data is a synthetic language, generated from the seed (nothing is downloaded): segments
that open with a marker naming their kind, then noise (unpredictable), a copy (the second
half repeats the first), an arithmetic progression, or a recall of the segment some
distance back, beyond the attention window (only the causal layers can see it).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper modules

import attngen as ag  # noqa: E402
import attngen.nn as agnn  # noqa: E402
from training_loop import Batch, Block, script_main, small_normal_init  # noqa: E402
from training_peers import FlexCore, PeerAttention, sdpa_causal  # noqa: E402

BACKENDS = ("attngen", "sdpa", "flex")
MARKERS = 4  # token ids 0..3 open a segment and name its kind
NOISE, COPY, ARITHMETIC, RECALL = range(MARKERS)


@dataclass(frozen=True)
class LMConfig:
    layers: int
    dim: int
    heads: int
    kv_heads: int
    seq_len: int
    window: int          # tokens a window layer sees, itself included (gpt-oss: 128)
    vocab: int
    segment: int         # tokens per segment of the synthetic language
    recall_distance: int  # segments back that a recall segment repeats
    batch: int
    steps: int
    lr: float
    warmup: int


PRESETS = {
    "full": LMConfig(layers=6, dim=512, heads=8, kv_heads=2, seq_len=2048, window=128, vocab=512, segment=32,
                     recall_distance=8, batch=8, steps=300, lr=1e-3, warmup=30),
    "tiny": LMConfig(layers=2, dim=64, heads=2, kv_heads=1, seq_len=64, window=16, vocab=64, segment=16,
                     recall_distance=2, batch=2, steps=3, lr=1e-3, warmup=1),
}


def synthetic_tokens(gen: torch.Generator, cfg: LMConfig) -> torch.Tensor:
    """(batch, seq_len + 1) token ids of the synthetic language (see the module docstring)."""
    B, S = cfg.batch, cfg.segment
    n_seg = -(-(cfg.seq_len + 1) // S)
    content = cfg.vocab - MARKERS
    kinds = torch.randint(0, MARKERS, (B, n_seg), generator=gen)
    noise = torch.randint(0, content, (B, n_seg, S - 1), generator=gen)
    copy = noise.clone()
    half = (S - 1) // 2
    copy[..., S - 1 - half:] = noise[..., :half]
    start = torch.randint(0, content, (B, n_seg, 1), generator=gen)
    stride = torch.randint(1, 8, (B, n_seg, 1), generator=gen)
    arithmetic = (start + stride * torch.arange(S - 1)) % content
    kind = kinds.unsqueeze(-1)
    body = torch.where(kind == COPY, copy, torch.where(kind == ARITHMETIC, arithmetic, noise))
    for j in range(cfg.recall_distance, n_seg):  # in order, so a recall of a recall repeats what was emitted
        body[:, j] = torch.where(kind[:, j] == RECALL, body[:, j - cfg.recall_distance], body[:, j])
    tokens = torch.cat([kinds.unsqueeze(-1), body + MARKERS], dim=-1).view(B, n_seg * S)
    return tokens[:, : cfg.seq_len + 1]


def make_batches(cfg: LMConfig, steps: int, seed: int, device: torch.device) -> list[Batch]:
    """``steps`` (inputs, targets) pairs, generated on the CPU from ``seed`` and moved once."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        tokens = synthetic_tokens(gen, cfg).to(device)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    return batches


def layer_variants(cfg: LMConfig) -> list[ag.Variant]:
    """gpt-oss's pattern: even layers a sliding window with learned sinks, odd layers causal."""
    window = ag.Variant(mask=ag.sliding_window(cfg.window - 1), norm=ag.softmax(sink=True), name="lm_window_sinks")
    causal = ag.Variant(mask=ag.causal(), name="lm_causal")
    return [window if i % 2 == 0 else causal for i in range(cfg.layers)]


def attention_layer(backend: str, cfg: LMConfig, variant: ag.Variant, device: torch.device) -> nn.Module:
    args = (cfg.dim, cfg.heads, cfg.kv_heads)
    if backend == "attngen":
        return agnn.Attention(*args, variant=variant)
    if backend == "sdpa" and not variant.norm.sink:
        return PeerAttention(*args, variant=variant, core=sdpa_causal)
    return PeerAttention(*args, variant=variant, core=FlexCore(variant.mask, cfg.seq_len, device))


class DecoderLM(nn.Module):
    """Token and learned position embeddings, pre-norm blocks, a linear head; returns the loss."""

    def __init__(self, cfg: LMConfig, attention: list[nn.Module]) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.position = nn.Embedding(cfg.seq_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, attn) for attn in attention)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        small_normal_init(self)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def make_model(backend: str, cfg: LMConfig, device: torch.device) -> DecoderLM:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    attention = [attention_layer(backend, cfg, v, device) for v in layer_variants(cfg)]
    return DecoderLM(cfg, attention).to(device)


def describe(cfg: LMConfig) -> str:
    return (f"decoder LM: {cfg.layers} layers, width {cfg.dim}, {cfg.heads} heads ({cfg.kv_heads} KV), "
            f"{cfg.seq_len} tokens x {cfg.batch}, window {cfg.window} with sinks on even layers")


def main(argv: list[str] | None = None) -> dict:
    return script_main("train_lm", __doc__, BACKENDS, ("attngen", "sdpa"), PRESETS, make_batches, make_model,
                       describe, argv)


if __name__ == "__main__":
    main()
