"""The training examples: both backends train to the same losses (CPU, float32, eager, tiny
sizes, a couple of steps), the peers' sink rule and masks equal attngen's semantics, and the
synthetic language is what train_lm.py says it is."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import attngen as ag
from attngen.testing import relative_error
import neighborhood_oracle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import train_lm  # noqa: E402
import train_nat  # noqa: E402
from training_peers import FlexCore, dense_attention, flex_mask_mod, with_sinks  # noqa: E402


def _losses_agree(script, argv: list[str], out: Path) -> dict:
    payload = script.main(argv + ["--device", "cpu", "--steps", "2", "--no-compile", "--out", str(out)])
    written = json.loads((out / f"{payload['script']}.json").read_text())
    assert written["runs"].keys() == payload["runs"].keys()
    runs = list(written["runs"].values())
    assert len(runs) == 2 and all(len(r["losses"]) == 2 and len(r["step_ms"]) == 2 for r in runs)
    first, second = (torch.tensor(r["losses"]) for r in runs)
    # fp32 runs differ by summation order only (~1e-7); attention contributes little to the
    # loss at initialization (small weights), so a wrong core shows only at this resolution
    torch.testing.assert_close(first, second, rtol=1e-6, atol=0)
    return written


def test_lm_backends_train_alike(tmp_path):
    written = _losses_agree(train_lm, ["--backend", "attngen", "sdpa"], tmp_path)
    assert written["config"]["layers"] == 2 and not written["amp"]


def test_nat_backends_train_alike(tmp_path):
    _losses_agree(train_nat, ["--backend", "attngen", "flex"], tmp_path)


@pytest.mark.parametrize("flex", [True, False], ids=["flex_attention", "dense_cpu_emulation"])
def test_sink_rule_matches_reference(flex):
    """Softmax with sinks = the sink-free softmax's output times sigmoid(lse - sink), for
    FlexAttention (its forward runs on the CPU) and the CPU emulation the training uses."""
    variant = ag.Variant(mask=ag.sliding_window(11), norm=ag.softmax(sink=True))
    L, scale = 48, 0.3
    q, k, v = torch.randn(2, 4, L, 32), torch.randn(2, 2, L, 32), torch.randn(2, 2, L, 32)
    sinks = torch.randn(4) * 2
    core = FlexCore(variant.mask, L, "cpu")
    if flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        block_mask = create_block_mask(flex_mask_mod(variant.mask, L), None, None, L, L, device="cpu")
        out, lse = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True, return_lse=True)
        got = with_sinks(out, lse, sinks)
    else:
        got = core(q, k, v, scale, sinks)
    expected = ag.reference(variant)(q, k, v, scale=scale, sinks=sinks)
    assert relative_error(got, expected) < 1e-5
    out, lse = dense_attention(q, k, v, core.keep, scale)
    assert relative_error(with_sinks(out, lse, torch.full((4,), -1e4)), ag.reference(ag.Variant(
        mask=variant.mask))(q, k, v, scale=scale)) < 1e-5  # a sink at -inf changes nothing


def test_flex_mask_mod_is_natten_neighborhood():
    from torch.nn.attention.flex_attention import create_mask

    na = ag.neighborhood((3, 4), dilation=(2, 1), stride=(1, 2), is_causal=(False, True))
    shape = (7, 9)
    got = create_mask(flex_mask_mod(na, 63, shape), None, None, 63, 63, device="cpu").view(63, 63)
    assert torch.equal(got, neighborhood_oracle.mask(shape, (3, 4), (2, 1), (1, 2), (False, True)))


def test_synthetic_language_segments():
    cfg = train_lm.PRESETS["tiny"]
    tokens = train_lm.synthetic_tokens(torch.Generator().manual_seed(3), cfg)
    again = train_lm.synthetic_tokens(torch.Generator().manual_seed(3), cfg)
    assert tokens.shape == (cfg.batch, cfg.seq_len + 1) and torch.equal(tokens, again)
    S, R = cfg.segment, cfg.recall_distance
    segments = tokens[:, : (tokens.shape[1] // S) * S].reshape(cfg.batch, -1, S)
    kinds, body = segments[..., 0], segments[..., 1:] - train_lm.MARKERS
    assert (kinds < train_lm.MARKERS).all() and (body >= 0).all()
    half = (S - 1) // 2
    seen = set()
    for b, j in zip(*torch.nonzero(torch.ones_like(kinds)).unbind(1)):
        kind, seg = int(kinds[b, j]), body[b, j]
        if kind == train_lm.COPY:
            assert torch.equal(seg[-half:], seg[:half])
        elif kind == train_lm.ARITHMETIC:
            steps = (seg[1:] - seg[:-1]) % (cfg.vocab - train_lm.MARKERS)
            assert (steps == steps[0]).all() and 1 <= int(steps[0]) < 8
        elif kind == train_lm.RECALL and j >= R:
            assert torch.equal(seg, body[b, j - R])
        seen.add(kind)
    assert seen == {0, 1, 2, 3}


def test_synthetic_images_label_the_orientation():
    cfg = train_nat.PRESETS["tiny"]
    images, labels = train_nat.synthetic_images(torch.Generator().manual_seed(0), cfg)
    assert images.shape == (cfg.batch, 3, cfg.image, cfg.image) and labels.shape == (cfg.batch,)
    quiet = train_nat.NATConfig(**{**cfg.__dict__, "noise": 0.0, "batch": 64})
    images, labels = train_nat.synthetic_images(torch.Generator().manual_seed(0), quiet)
    # without noise, a grating at angle 0 (label 0) varies along each row and hardly down each
    # column (up to the angle's jitter); at 90 degrees (label 2) the other way round
    down_columns = images.std(dim=2).mean(dim=(1, 2))
    along_rows = images.std(dim=3).mean(dim=(1, 2))
    assert (labels == 0).any() and (labels == 2).any()
    assert down_columns[labels == 0].mean() < 0.5 * along_rows[labels == 0].mean()
    assert along_rows[labels == 2].mean() < 0.5 * down_columns[labels == 2].mean()
