"""The FlexAttention mod vocabulary that attngen traces: FlexAttention's mask combinators,
mask_mods returning tensor reads (bool and int mask tensors), chained indexing, tensor
methods, and the errors for what cannot be traced. Each traced mod is checked against
PyTorch's FlexAttention on the same inputs."""
from __future__ import annotations

import warnings

import pytest
import torch
from helpers import DEVICE, FP32_CLOSE
from torch.nn.attention import flex_attention as flex

import attngen as ag

B, H, L, D = 1, 2, 96, 16


def _random(*shape):
    return torch.randn(*shape, device=DEVICE)


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return q_idx - kv_idx <= 6


KEEP = torch.rand(B, H, 3, 3, device=DEVICE) > 0.4
KEEP_INT = KEEP.to(torch.int32)
INTERVALS = torch.tensor([[0, 40], [40, 96]], device=DEVICE)
IMAGE = (torch.arange(L, device=DEVICE) >= 40).long()
TABLE = _random(H, L)


def block_keep(b, h, q_idx, kv_idx):
    return KEEP[b, h, q_idx // 32, kv_idx // 32]


def block_keep_int(b, h, q_idx, kv_idx):
    return KEEP_INT[b, h, q_idx // 32, kv_idx // 32]


def same_image(b, h, q_idx, kv_idx):
    image = IMAGE[q_idx]
    return (kv_idx >= INTERVALS[image][0]) & (kv_idx < INTERVALS[image][1])


def rows_then_columns(score, b, h, q_idx, kv_idx):
    return score + TABLE[h][kv_idx]


def methods(score, b, h, q_idx, kv_idx):
    distance = (q_idx - kv_idx).abs().clamp(max=8).to(torch.float32)
    return score - 0.1 * distance + (q_idx >= kv_idx).to(torch.int32) * 0.5


def new_constants(b, h, q_idx, kv_idx):
    keep = b.new_ones((), dtype=torch.bool) & (q_idx >= kv_idx)
    return keep | b.new_zeros((), dtype=torch.bool)


MASKS = {
    "and_masks": flex.and_masks(causal, window),
    "or_masks": flex.or_masks(window, flex.and_masks(causal, lambda b, h, q, kv: kv < 8)),
    "noop_mask": flex.noop_mask,
    "bool_tensor_read": block_keep,
    "int_tensor_read": block_keep_int,
    "chained_indexing": same_image,
    "new_ones_new_zeros": new_constants,
}
SCORES = {"chained_indexing": rows_then_columns, "tensor_methods": methods}


# FlexAttention's create_block_mask takes bool results only: the int mask is checked
# against the same mask read from the bool tensor
AS_FLEX_MASK = {block_keep_int: block_keep}


def _compare(score_mod=None, mask_mod=None):
    q, k, v = _random(B, H, L, D), _random(B, H, L, D), _random(B, H, L, D)
    variant = ag.Variant(score=score_mod, mask=mask_mod)
    out = ag.compile(variant)(q, k, v)
    flex_mask = AS_FLEX_MASK.get(mask_mod, mask_mod)
    bm = flex.create_block_mask(flex_mask, B, H, L, L, device=DEVICE, BLOCK_SIZE=32) if mask_mod else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        expected = flex.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm)
    torch.testing.assert_close(out, expected, **FP32_CLOSE)


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_vocabulary(name):
    _compare(mask_mod=MASKS[name])


@pytest.mark.parametrize("name", list(SCORES))
def test_score_vocabulary(name):
    _compare(score_mod=SCORES[name])


def test_bool_read_is_a_truth_value():
    text = ag.Variant(mask=block_keep).to_text()
    assert "Ne(KEEP[b, h, FloorDiv(q_idx, 32), FloorDiv(kv_idx, 32)], 0)" in text


def test_runtime_tensor_chained_indexing():
    """A named runtime tensor's rank is unknown while tracing: t[h][kv] reads t[h, kv]."""
    def bias(score, b, h, q_idx, kv_idx, table):
        return score + table[h][kv_idx]
    assert "table[h, kv_idx]" in ag.Variant(score=bias).to_text()


def test_untraceable_mods_name_function_operation_and_fix():
    def branches(b, h, q_idx, kv_idx):
        if q_idx > kv_idx:
            return True
        return False

    def head_dot(score, b, h, q_idx, kv_idx):
        return score + torch.dot(TABLE[h], TABLE[h])

    def too_few(b, h, q_idx, kv_idx):
        return KEEP[b, h] > 0

    def truncating(score, b, h, q_idx, kv_idx):
        return TABLE[h, score.to(torch.int64)]

    with pytest.raises(ag.TraceError, match=r"mask_mod 'branches': Python control flow.*use torch.where"):
        ag.Variant(mask=branches)
    with pytest.raises(ag.TraceError, match=r"score_mod 'head_dot': dot on 'TABLE' read with 1 of its 2 indices"):
        ag.Variant(score=head_dot)
    with pytest.raises(ag.TraceError, match=r"mask_mod 'too_few': .*'KEEP' is 4-D but is read with 2 indices"):
        ag.Variant(mask=too_few)
    with pytest.raises(ag.TraceError, match=r"score_mod 'truncating': casting score to torch.int64"):
        ag.Variant(score=truncating)
