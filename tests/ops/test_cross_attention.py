"""cross_attention (Triton, interpreter on CPU) against the fp64 reference: the fused full-width
RMSNorms of q and k, the online softmax over several key tiles, strided k/v views of a fused
k|v GEMM output, outputs poisoned before each call. cross_attention_out likewise, and against
the attention followed by its output projection (the absorption is exact)."""

from __future__ import annotations

import importlib

import pytest
import torch

import lpm_rt.ops as ops
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


# ---- cross_attention_out: the output projection absorbed into the values, residual added ----

def make_out_case(B, Lq, Lk, H, D, N, q_norm, k_norm, bias, dtype, seed=0):
    q, k, _, qw, kw = make_case(B, Lq, Lk, H, D, q_norm, k_norm, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    vo = torch.randn(B, Lk, H, N, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    res = (torch.randn(B, Lq, N, generator=g) * 2).to(dtype)
    return q, k, vo, qw, kw, b, res


OUT_CASES = [  # B, Lq, Lk, H, D, N, q_norm, k_norm, bias
    pytest.param(1, 37, 5, 4, 16, 64, True, False, True, id="text-normed-keys"),
    pytest.param(3, 20, 8, 2, 32, 64, True, True, True, id="audio-window-both-norms"),
    pytest.param(2, 5, 1, 8, 16, 300, False, False, False, id="one-key-three-column-tiles"),
    pytest.param(1, 70, 64, 2, 16, 40, True, True, True, id="a-full-key-tile-two-row-tiles"),
]


def _dbl(t):
    return None if t is None else t.double()


@pytest.mark.parametrize("B,Lq,Lk,H,D,N,q_norm,k_norm,bias", OUT_CASES)
def test_out_fp32_matches_fp64_reference(triton_backend, B, Lq, Lk, H, D, N, q_norm, k_norm, bias):
    q, k, vo, qw, kw, b, res = make_out_case(B, Lq, Lk, H, D, N, q_norm, k_norm, bias, torch.float32)
    out = ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res)
    ref = ops.cross_attention_out_ref(q.double(), k.double(), vo.double(), _dbl(qw), _dbl(kw), 1e-6, _dbl(b),
                                      res.double())
    low = ops.cross_attention_out_ref(q, k, vo, qw, kw, 1e-6, b, res)
    assert out.shape == (B, Lq, N) and out.dtype == res.dtype
    assert_calibrated(out, low, ref, floor=1e-5)


def test_out_bf16_close_to_fp64(triton_backend):
    """bf16 operands and P, fp32 sums: as close to fp64 as the torch bf16 path (x2 + floor)."""
    q, k, vo, qw, kw, b, res = make_out_case(2, 40, 8, 4, 16, 64, True, True, True, torch.bfloat16)
    out = ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res)
    ref = ops.cross_attention_out_ref(q.double(), k.double(), vo.double(), _dbl(qw), _dbl(kw), 1e-6, _dbl(b),
                                      res.double())
    assert_calibrated(out, ops.cross_attention_out_ref(q, k, vo, qw, kw, 1e-6, b, res), ref, floor=5e-2)
    assert_sqnr(out - res.double(), ref - res.double(), min_db=35.0, min_cos=0.999)


def test_out_is_the_attention_then_its_projection(triton_backend):
    """Absorbing the projection is exact: with vo[:, j, h] = Wo[:, h] v[:, j, h], the kernel gives
    residual + o(cross_attention(q, k, v)) -- in fp64 the two forms agree to rounding, and the
    kernel (fp32) agrees with them as closely as fp32 computes either."""
    B, Lq, Lk, H, D = 2, 24, 6, 4, 16
    q, k, v, qw, kw = make_case(B, Lq, Lk, H, D, True, True, torch.float64)
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(H * D, 48, dtype=torch.float64)
    res = torch.randn(B, Lq, 48, generator=g, dtype=torch.float64)
    vo = torch.einsum("bjhd,chd->bjhc", v, lin.weight.detach().view(48, H, D))
    with torch.no_grad():
        chain = res + lin(cross_attention_ref(q, k, v, qw, kw).flatten(2))
    absorbed = ops.cross_attention_out_ref(q, k, vo, qw, kw, 1e-6, lin.bias.detach(), res)
    assert (absorbed - chain).abs().max() < 1e-12
    f = lambda t: t.float()                                            # noqa: E731
    out = ops.cross_attention_out(f(q), f(k), f(vo), f(qw), f(kw), 1e-6, f(lin.bias.detach()), residual=f(res))
    low = ops.cross_attention_out_ref(f(q), f(k), f(vo), f(qw), f(kw), 1e-6, f(lin.bias.detach()), f(res))
    assert_calibrated(out, low, chain, floor=1e-5)


def test_out_launcher_really_launches_triton(triton_backend, monkeypatch):
    launches = spy_triton(monkeypatch, "cross_attention", "_cross_attn_out_kernel")
    monkeypatch.setattr(importlib.import_module("lpm_rt.ops.cross_attention"), "cross_attention_out_ref",
                        lambda *a, **k: pytest.fail("fell back to the reference"))
    q, k, vo, qw, kw, b, res = make_out_case(3, 40, 8, 2, 16, 32, True, True, True, torch.float32)
    out = ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res)
    assert launches == [(1, 3)] and torch.isfinite(out).all()


def test_out_bad_inputs_raise(triton_backend):
    q, k, vo, qw, kw, b, res = make_out_case(1, 4, 65, 2, 16, 32, True, True, True, torch.float32)
    with pytest.raises(ValueError, match="1 to 64 keys"):
        ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res)
    q, k, vo, qw, kw, b, res = make_out_case(1, 4, 3, 2, 16, 32, True, True, True, torch.float32)
    with pytest.raises(ValueError, match="residual must be"):
        ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res[:, :2])
    with pytest.raises(ValueError, match="vo .* must be"):
        ops.cross_attention_out(q, k, vo[:, :2], qw, kw, 1e-6, b, residual=res)
    with pytest.raises(TypeError, match="share a dtype"):
        ops.cross_attention_out(q, k, vo.double(), qw, kw, 1e-6, b, residual=res)
    with pytest.raises(ValueError, match="bias must be"):
        ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b[:-1], residual=res)


def test_out_traces_under_torch_compile(triton_backend):
    q, k, vo, qw, kw, b, res = make_out_case(1, 16, 3, 2, 16, 32, True, False, True, torch.float32)
    fn = torch.compile(lambda *a: ops.cross_attention_out(*a, residual=res), fullgraph=True, backend="aot_eager")
    out = fn(q, k, vo, qw, kw, 1e-6, b)
    assert torch.equal(out, ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["text", "audio"])
def test_gpu_out_lpm17b(gpu_triton, kind):
    """lpm-17b widths (40 heads of 128, C = 5120) compiled: the text attention over 8 tags for a
    chunk of 3 frames, or 3 frames' audio windows of 8 keys each with the key norm; against the
    fp32 reference (bf16 operands)."""
    from lpm_rt.config import preset

    m, s = preset("lpm-17b").model, preset("lpm-17b").stream
    B, Lq = (1, 3 * s.tokens_per_frame) if kind == "text" else (3, s.tokens_per_frame)
    q, k, vo, qw, kw, b, res = make_out_case(B, Lq, 8, m.num_heads, m.head_dim, m.dim, True, kind == "audio", True,
                                             torch.bfloat16)
    args = [t if t is None else t.cuda() for t in (q, k, vo, qw, kw)]
    out = ops.cross_attention_out(*args, 1e-6, b.cuda(), residual=res.cuda())
    f32 = [t if t is None else t.float() for t in args]
    ref = ops.cross_attention_out_ref(*f32, 1e-6, b.cuda().float(), res.cuda().float())
    low = ops.cross_attention_out_ref(*args, 1e-6, b.cuda(), res.cuda())
    assert_calibrated(out, low, ref, floor=0.1)


@pytest.mark.parametrize("dtype,per_entry", [(torch.float32, True), (torch.bfloat16, False)])
def test_out_with_the_next_norm_fused(triton_backend, dtype, per_entry):
    """next_norm: the rows as without it, and norm_modulate's e4m3 rows + scales of them (the
    LayerNorm's statistics of the rounded rows; per batch entry or one modulation for all), over
    three column tiles with a partial last one and two row tiles."""
    B, N = 3, 300
    q, k, vo, qw, kw, b, res = make_out_case(B, 70, 8, 2, 16, N, True, True, True, dtype)
    g = torch.Generator().manual_seed(7)
    shape = (B, 1, N) if per_entry else (N,)
    shift, scale = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g) * 0.2
    out, (y8, ys) = ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res, next_norm=(shift, scale, 1e-5))
    assert torch.equal(out, ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res))
    want8, want_s = ops.norm_modulate_ref(out, shift.expand(B, 1, N), scale.expand(B, 1, N), 1e-5, out_fp8=True)
    assert y8.dtype == torch.float8_e4m3fn and y8.shape == (B, 70, N) and ys.shape == (B, 70)
    assert torch.allclose(ys, want_s, rtol=1e-5, atol=0)
    assert (y8.float() != want8.float()).float().mean() < 0.01           # a rounding tie may flip a code
    with pytest.raises(ValueError, match="do not broadcast"):
        ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res, next_norm=(shift[..., :-1], scale, 1e-5))


@pytest.mark.parametrize("norm", [False, True])
def test_out_guided_is_the_lerp_of_two_streams(triton_backend, norm):
    """split/gain: keys [0, split) and [split, Lk) with a softmax each, weighted (1 - g, g) -- the
    lerp of the two streams' outputs, which is how audio guidance combines them (g = 4, beyond
    the two, as the demo's speaker guidance); with the next norm fused too."""
    B, N, ka = 3, 40, 8
    q, k, vo, qw, kw, b, res = make_out_case(B, 20, 2 * ka, 2, 16, N, True, True, True, torch.float32)
    shift, scale = torch.zeros(N), torch.full((N,), 0.1)
    nn_ = (shift, scale, 1e-6) if norm else None
    got = ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res, next_norm=nn_, split=ka, gain=4.0)
    out = got[0] if norm else got
    parts = [ops.cross_attention_out_ref(q.double(), k[:, sl].double(), vo[:, sl].double(), qw.double(), kw.double(),
                                         1e-6, b.double(), res.double()) for sl in (slice(0, ka), slice(ka, None))]
    want = torch.lerp(*parts, 4.0)
    low = ops.cross_attention_out_ref(q, k, vo, qw, kw, 1e-6, b, res, split=ka, gain=4.0)
    assert_calibrated(out, low, want, floor=1e-5)
    if norm:
        want8, want_s = ops.norm_modulate_ref(out, shift, scale, 1e-6, out_fp8=True)
        assert torch.allclose(got[1][1], want_s, rtol=1e-5, atol=0)
        assert (got[1][0].float() != want8.float()).float().mean() < 0.01
    with pytest.raises(ValueError, match="split"):
        ops.cross_attention_out(q, k, vo, qw, kw, 1e-6, b, residual=res, split=2 * ka, gain=4.0)
