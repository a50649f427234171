"""Linear attention as a recurrence (attn.prefill / attn.step, runtime/linear_state.py):
a prompt's prefill followed by decoding steps equals the whole sequence at once (ag.reference,
float64), the returned state equals its definition, prefills continue from a state, and the
entry points trace and refuse what they cannot serve."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, FP32_CLOSE, ON_GPU, tolerance

import attngen as ag
from attngen.testing import relative_error

HQ, HKV, D, DV = 4, 2, 24, 40        # GQA, head dims that are not powers of two, D != Dv
STATE_TOL = 5e-3 if ON_GPU else 1e-5  # relative L2 of states (the GPU's fp32 dots are tf32)


def variant(fm: str, decay: bool, normalize: bool) -> ag.Variant:
    return ag.Variant(mask=ag.causal(), norm=ag.linear(fm, decay=decay, normalize=normalize))


def inputs(v: ag.Variant, L: int, dtype=torch.float32, B: int = 1):
    """As tests/test_linear.py: positive q, k where a normalizer meets a feature map that can be 0."""
    g = torch.Generator().manual_seed(0)
    q, k, val = torch.randn(B, HQ, L, D, generator=g), torch.randn(B, HKV, L, D, generator=g), \
        torch.randn(B, HKV, L, DV, generator=g)
    if v.norm.normalize and v.norm.feature_map != "elu1":
        q, k = q.abs(), k.abs()
    tensors = {"decay_log": -torch.logspace(-2, -0.3, HQ).to(DEVICE)} if v.norm.decay else {}
    return (*(t.to(DEVICE, dtype) for t in (q, k, val)), tensors)


def state_by_definition(v: ag.Variant, k, val, tensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, z) after the tokens of k, val in float64: sum_j g^(L-1-j) phi(k_j) v_j^T, sum_j g^(L-1-j) phi(k_j)."""
    L = k.shape[2]
    phi = {"identity": lambda x: x, "elu1": lambda x: torch.nn.functional.elu(x) + 1, "relu": torch.relu}
    fk = phi[v.norm.feature_map](k.double()).repeat_interleave(HQ // HKV, 1)
    vv = val.double().repeat_interleave(HQ // HKV, 1)
    w = torch.ones(HQ, L, dtype=torch.float64, device=k.device)
    if v.norm.decay:
        w = torch.exp(tensors["decay_log"].double()[:, None] * (L - 1 - torch.arange(L, device=k.device)))
    fk = fk * w[None, :, :, None]
    return fk.transpose(-1, -2) @ vv, fk.sum(2)


CASES = [("identity", True, False), ("elu1", True, True), ("relu", False, True), ("elu1", False, False)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_prefill_then_steps_equal_the_whole_sequence(case):
    """45 prompt tokens (a ragged last chunk), then 3 single steps and one 2-token step."""
    v = variant(*case)
    attn = ag.compile(v)
    L, n = 45, 5
    q, k, val, tensors = inputs(v, L + n)
    with torch.no_grad():
        out, state = attn.prefill(q[:, :, :L], k[:, :, :L], val[:, :, :L], **tensors)
        S, z = state_by_definition(v, k[:, :, :L], val[:, :, :L], tensors)
        assert state.kv.dtype == torch.float32 and state.kv.shape == (1, HQ, D, DV)
        assert relative_error(state.kv, S) < STATE_TOL
        assert (state.k_sum is None) == (not v.norm.normalize)
        if v.norm.normalize:
            assert relative_error(state.k_sum, z) < STATE_TOL
        outs = [out]
        for i in range(L, L + n - 2):
            step_out, returned = attn.step(q[:, :, i:i + 1], k[:, :, i:i + 1], val[:, :, i:i + 1], state, **tensors)
            assert returned.kv is state.kv, "the state advances in place"
            outs.append(step_out)
        outs.append(attn.step(q[:, :, L + n - 2:], k[:, :, L + n - 2:], val[:, :, L + n - 2:], state, **tensors)[0])
    ref = ag.reference(v)(q, k, val, **tensors)
    assert relative_error(torch.cat(outs, 2), ref) < tolerance(torch.float32)
    assert relative_error(state.kv, state_by_definition(v, k, val, tensors)[0]) < STATE_TOL


def test_prefill_continues_a_state_and_steps_start_from_zeros():
    """Two prefills of 21 and 30 tokens on 16-token chunks (ragged both times) equal one of 51;
    decoding every token from LinearState.zeros does too."""
    v = variant("elu1", True, True)
    attn = ag.compile(v)
    q, k, val, tensors = inputs(v, 51)
    config = ag.LinearConfig(chunk=16, block_k=16, block_v=16, num_warps=4, num_stages=1)
    with torch.no_grad():
        first, state = attn.prefill(q[:, :, :21], k[:, :, :21], val[:, :, :21], config=config, **tensors)
        second, state = attn.prefill(q[:, :, 21:], k[:, :, 21:], val[:, :, 21:], state=state, config=config,
                                     **tensors)
        scratch = ag.LinearState.zeros(1, HQ, D, DV, normalize=True, device=DEVICE)
        stepped = attn.step(q, k, val, scratch, **tensors)[0]
    ref = ag.reference(v)(q, k, val, **tensors)
    assert relative_error(torch.cat([first, second], 2), ref) < tolerance(torch.float32)
    assert relative_error(stepped, ref) < tolerance(torch.float32)
    assert relative_error(state.kv, scratch.kv) < STATE_TOL and relative_error(state.k_sum, scratch.k_sum) < STATE_TOL


def test_half_precision_decoding():
    v = variant("identity", True, False)
    attn = ag.compile(v)
    q, k, val, tensors = inputs(v, 40, torch.float16, B=2)
    with torch.no_grad():
        out, state = attn.prefill(q[:, :, :37], k[:, :, :37], val[:, :, :37], **tensors)
        rest = attn.step(q[:, :, 37:], k[:, :, 37:], val[:, :, 37:], state, **tensors)[0]
    assert rest.dtype == torch.float16
    ref = ag.reference(v)(q, k, val, **tensors)
    assert relative_error(torch.cat([out, rest], 2), ref) < tolerance(torch.float16)


def test_traced_fullgraph():
    v = variant("elu1", True, True)
    attn = ag.compile(v)
    q, k, val, tensors = inputs(v, 20)

    def serve(q, k, val, decay_log):
        out, state = attn.prefill(q[:, :, :18], k[:, :, :18], val[:, :, :18], decay_log=decay_log)
        last, state = attn.step(q[:, :, 18:], k[:, :, 18:], val[:, :, 18:], state, decay_log=decay_log)
        return torch.cat([out, last], 2), state.kv, state.k_sum

    with torch.no_grad():
        assert torch._dynamo.explain(serve)(q, k, val, tensors["decay_log"]).graph_break_count == 0
        traced = torch.compile(serve, fullgraph=True, backend="aot_eager")(q, k, val, tensors["decay_log"])
        eager = serve(q, k, val, tensors["decay_log"])
    for a, b in zip(traced, eager):
        torch.testing.assert_close(a, b, **FP32_CLOSE)


def test_refusals_name_the_problem():
    v = variant("elu1", False, True)
    attn = ag.compile(v)
    q, k, val, _ = inputs(v, 8)
    state = ag.LinearState.zeros(1, HQ, D, DV, normalize=True, device=DEVICE)
    with pytest.raises(ValueError, match="not causal"):
        ag.compile(ag.Variant(norm=ag.linear())).step(q, k, val, state)
    with pytest.raises(ValueError, match="inference path"):
        attn.prefill(q.requires_grad_(), k, val)
    q = q.detach()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"state.kv must have shape \(1, 4, 24, 40\)"):
            attn.step(q, k, val, ag.LinearState(state.kv[:, :2], state.k_sum))
        with pytest.raises(TypeError, match="state.k_sum must be a torch.Tensor"):
            attn.step(q, k, val, ag.LinearState(state.kv, None))
        with pytest.raises(TypeError, match="state.kv must be float32"):
            attn.step(q, k, val, ag.LinearState(state.kv.double(), state.k_sum))
        with pytest.raises(ValueError, match="state.k_sum must be None"):
            ag.compile(variant("identity", True, False)).step(q, k, val, state,
                                                             decay_log=-torch.ones(HQ, device=DEVICE))
        with pytest.raises(ValueError, match="positions but q has"):
            attn.step(q, k[:, :, :3], val[:, :, :3], state)


def test_opcheck_prefill_and_step():
    """The ops' schemas, fake implementations, and the step's declared mutation of the state."""
    v = variant("elu1", True, True)
    attn = ag.compile(v)
    q, k, val, tensors = inputs(v, 12)
    with torch.no_grad():
        _, state = attn.prefill(q[:, :, :10], k[:, :, :10], val[:, :, :10], **tensors)
    decay = tensors["decay_log"]
    torch.library.opcheck(torch.ops.attngen.linear_prefill.default,
                          (attn.key, q[:, :, :10], k[:, :, :10], val[:, :, :10], decay, state.kv, state.k_sum, ""))
    torch.library.opcheck(torch.ops.attngen.linear_step.default,
                          (attn.key, q[:, :, 10:], k[:, :, 10:], val[:, :, 10:], decay, state.kv, state.k_sum))
