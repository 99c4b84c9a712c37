"""cross_attention (Triton, interpreter on CPU) against the fp64 reference: the fused full-width
RMSNorms of q and k, the online softmax over several key tiles, strided k/v views of a fused
k|v GEMM output, outputs poisoned before each call."""

from __future__ import annotations

import pytest
import torch

from lpm_rt.ops import cross_attention, cross_attention_ref

from _checks import assert_calibrated, assert_sqnr, spy_triton

pytestmark = pytest.mark.usefixtures("poison_allocations")


def make_case(B, Lq, Lk, H, D, q_norm, k_norm, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, Lq, H, D, generator=g) * 3 + 0.5).to(dtype)
    kv = (torch.randn(B, Lk, 2, H, D, generator=g) * 2).to(dtype)        # a fused k|v GEMM's output
    k, v = kv[:, :, 0], kv[:, :, 1]                                      # strided views
    qw = (1 + 0.3 * torch.randn(H * D, generator=g)).to(dtype) if q_norm else None
    kw = (1 + 0.3 * torch.randn(H * D, generator=g)).to(dtype) if k_norm else None
    return q, k, v, qw, kw


CASES = [  # B, Lq, Lk, H, D, q_norm, k_norm
    pytest.param(1, 37, 100, 4, 16, True, False, id="text-two-key-tiles"),
    pytest.param(3, 20, 8, 2, 32, True, True, id="audio-window-both-norms"),
    pytest.param(2, 5, 3, 1, 64, False, False, id="no-norms"),
    pytest.param(1, 1, 1, 8, 16, True, True, id="one-query-one-key"),
]


@pytest.mark.parametrize("B,Lq,Lk,H,D,q_norm,k_norm", CASES)
def test_fp32_matches_fp64_reference(triton_backend, B, Lq, Lk, H, D, q_norm, k_norm):
    q, k, v, qw, kw = make_case(B, Lq, Lk, H, D, q_norm, k_norm, torch.float32)
    out = cross_attention(q, k, v, qw, kw, eps=1e-6)
    dbl = lambda t: None if t is None else t.double()                   # noqa: E731
    ref = cross_attention_ref(q.double(), k.double(), v.double(), dbl(qw), dbl(kw), eps=1e-6)
    low = cross_attention_ref(q, k, v, qw, kw, eps=1e-6)
    assert out.shape == (B, Lq, H, D) and out.is_contiguous()
    assert_calibrated(out, low, ref, floor=1e-5)


@pytest.mark.parametrize("B,Lq,Lk,H,D,q_norm,k_norm", CASES[:2])
def test_bf16_close_to_fp64(triton_backend, B, Lq, Lk, H, D, q_norm, k_norm):
    """bf16 operands, fp32 accumulation: as close to fp64 as the torch bf16 path (x2 + floor),
    and >= 35 dB (bf16 rounding of q, k, P and the output: ~45 dB here)."""
    q, k, v, qw, kw = make_case(B, Lq, Lk, H, D, q_norm, k_norm, torch.bfloat16)
    out = cross_attention(q, k, v, qw, kw)
    dbl = lambda t: None if t is None else t.double()                   # noqa: E731
    ref = cross_attention_ref(q.double(), k.double(), v.double(), dbl(qw), dbl(kw))
    low = cross_attention_ref(q, k, v, qw, kw)
    assert_calibrated(out, low, ref, floor=2e-2)
    assert_sqnr(out, ref, min_db=35.0, min_cos=0.999)


def test_norms_are_over_the_full_width(triton_backend):
    """A per-head norm would pass for H=1: with 4 heads whose scales differ, only the full-width
    RMS matches (the reference with per-head norms is far off)."""
    q, k, v, qw, kw = make_case(1, 9, 5, 4, 16, True, True, torch.float32)
    q = q * torch.tensor([0.1, 1.0, 3.0, 10.0])[None, None, :, None]
    out = cross_attention(q, k, v, qw, kw)
    assert_calibrated(out, cross_attention_ref(q, k, v, qw, kw), cross_attention_ref(
        q.double(), k.double(), v.double(), qw.double(), kw.double()), floor=1e-5)


def test_launcher_really_launches_triton(triton_backend, monkeypatch):
    launches = spy_triton(monkeypatch, "cross_attention", "_cross_attn_kernel")
    q, k, v, qw, kw = make_case(2, 40, 8, 2, 16, True, True, torch.float32)
    out = cross_attention(q, k, v, qw, kw)
    assert launches == [(1, 2)] and torch.isfinite(out).all()


def test_bad_inputs_raise(triton_backend):
    q, k, v, qw, kw = make_case(1, 4, 130, 2, 16, True, True, torch.float32)
    with pytest.raises(ValueError, match="at most 128 keys"):
        cross_attention(q, k, v, qw, kw)
    with pytest.raises(TypeError, match="share a dtype"):
        cross_attention(q, k.double(), v, qw)
    with pytest.raises(ValueError, match="q_weight must be"):
        cross_attention(q, k, v, qw[:-1])
    with pytest.raises(ValueError, match="at least one key"):
        cross_attention(q, k[:, :0], v[:, :0], qw)
