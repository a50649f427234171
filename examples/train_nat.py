"""Train a small image classifier with 2-D neighborhood attention (NAT style), with attngen and
with FlexAttention under the same NATTEN-semantics neighborhood mask.

    python examples/train_nat.py                         # GPU: 128x128 images, bf16, compiled
    python examples/train_nat.py --device cpu --steps 3  # CPU: tiny sizes, float32, eager

The model: a patch embedding (strided convolution) to a grid of tokens in NATTEN's layout
(B, X, Y, C), pre-norm blocks of attngen.nn.NeighborhoodAttention2D (on the GPU, dilation
alternating 1 and 2, as DiNAT does) and an MLP, mean pooling and a linear classifier. The flex backend runs
the same module with its core on FlexAttention (training_peers.py), whose mask_mod is
attngen.reference's evaluation of the same ``ag.neighborhood`` node.

The images are generated from the seed (nothing is downloaded): a noisy oriented grating per
image, with a random phase and colour; the class is the grating's orientation (4 of them)
and, with 8 classes, its frequency (2 of them).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper modules

import attngen.nn as agnn  # noqa: E402
from training_loop import Batch, Block, script_main, small_normal_init  # noqa: E402
from training_peers import PeerNeighborhoodAttention2D  # noqa: E402

BACKENDS = ("attngen", "flex")


@dataclass(frozen=True)
class NATConfig:
    image: int        # pixels per side
    patch: int        # pixels per token per side
    dim: int
    heads: int
    kernel: int       # neighborhood window per axis
    dilations: tuple[int, ...]  # one block per entry (DiNAT alternates 1 and 2)
    classes: int      # 4 orientations x (1 or 2) frequencies
    noise: float      # std of the Gaussian pixel noise
    batch: int
    steps: int
    lr: float
    warmup: int

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image // self.patch,) * 2


PRESETS = {
    "full": NATConfig(image=128, patch=4, dim=256, heads=4, kernel=7, dilations=(1, 2, 1, 2), classes=8, noise=1.0,
                      batch=32, steps=300, lr=1e-3, warmup=30),
    # dilation 1 only: the interpreter runs dilated backward passes ~4x slower (tests/test_nn.py covers dilation)
    "tiny": NATConfig(image=16, patch=2, dim=64, heads=2, kernel=3, dilations=(1, 1), classes=4, noise=1.0, batch=2,
                      steps=3, lr=1e-3, warmup=1),
}


def synthetic_images(gen: torch.Generator, cfg: NATConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, S, S), labels (B,)) on the generator's device: noisy gratings whose
    orientation (and frequency) is the class."""
    B, S, device = cfg.batch, cfg.image, gen.device
    labels = torch.randint(0, cfg.classes, (B,), generator=gen, device=device)
    angle = (labels % 4).float() * (math.pi / 4) + 0.05 * torch.randn(B, generator=gen, device=device)
    cycles = torch.where(labels // 4 == 0, 3.0, 6.0)
    phase = 2 * math.pi * torch.rand(B, generator=gen, device=device)
    coords = torch.arange(S, device=device) / S
    x, y = coords.view(1, 1, S), coords.view(1, S, 1)
    along = x * torch.cos(angle).view(B, 1, 1) + y * torch.sin(angle).view(B, 1, 1)
    wave = torch.sin(2 * math.pi * cycles.view(B, 1, 1) * along + phase.view(B, 1, 1))
    colour = 0.2 + 0.8 * torch.rand(B, 3, 1, 1, generator=gen, device=device)
    noise = torch.randn(B, 3, S, S, generator=gen, device=device)
    return colour * wave.unsqueeze(1) + cfg.noise * noise, labels


def make_batches(cfg: NATConfig, steps: int, seed: int, device: torch.device) -> list[Batch]:
    """``steps`` batches generated on ``device`` from ``seed`` (the same on every run of that device)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return [synthetic_images(gen, cfg) for _ in range(steps)]


def attention_layer(backend: str, cfg: NATConfig, dilation: int, device: torch.device) -> nn.Module:
    args = (cfg.dim, cfg.heads, cfg.kernel)
    if backend == "attngen":
        return agnn.NeighborhoodAttention2D(*args, dilation=dilation)
    return PeerNeighborhoodAttention2D(*args, dilation=dilation, spatial_shape=cfg.grid, device=device)


class NeighborhoodClassifier(nn.Module):
    """Patch embedding, neighborhood-attention blocks on (B, X, Y, C), mean pool, classifier; returns the loss."""

    def __init__(self, cfg: NATConfig, attention: list[nn.Module]) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.blocks = nn.ModuleList(Block(cfg.dim, attn) for attn in attention)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.classes)
        small_normal_init(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).permute(0, 2, 3, 1)  # (B, C, X, Y) -> NATTEN's (B, X, Y, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x).mean(dim=(1, 2)))
        return F.cross_entropy(logits.float(), labels)


def make_model(backend: str, cfg: NATConfig, device: torch.device) -> NeighborhoodClassifier:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    attention = [attention_layer(backend, cfg, dilation, device) for dilation in cfg.dilations]
    return NeighborhoodClassifier(cfg, attention).to(device)


def describe(cfg: NATConfig) -> str:
    return (f"NAT classifier: {cfg.image}x{cfg.image} images, {cfg.grid[0]}x{cfg.grid[1]} tokens, width {cfg.dim}, "
            f"{cfg.heads} heads, {len(cfg.dilations)} blocks of {cfg.kernel}x{cfg.kernel} neighborhoods "
            f"(dilations {cfg.dilations}), batch {cfg.batch}")


def main(argv: list[str] | None = None) -> dict:
    return script_main("train_nat", __doc__, BACKENDS, BACKENDS, PRESETS, make_batches, make_model, describe, argv)


if __name__ == "__main__":
    main()
