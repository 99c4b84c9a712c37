"""fp8_linear (Triton, interpreter on CPU).

Two questions, two checks: (1) given the same fp8 operands and scales, does the kernel compute
what the fp64 reference computes (calibrated bound: fp32 accumulation + output rounding);
(2) is the whole fp8 path (quantize activations per token and weights per channel / per 1x128
block, GEMM, epilogue) accurate against the unquantized fp64 layer (SQNR, cosine).
"""

from __future__ import annotations


import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.ops.fp8_linear import fp8_linear, fp8_linear_ref, quantize_fp8_rows, quantize_fp8_weight

from _checks import assert_calibrated, assert_sqnr, spy_triton

pytestmark = pytest.mark.usefixtures("poison_allocations")   # unwritten outputs show as NaN

F64 = torch.float64


def make_case(B, L, K, N, block, epilogue, dtype=torch.bfloat16, seed=0):
    """Activations as a [B, L, K] view, weights [N, K], Wan-style per-sample gate from a chunk(6) view."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) * K ** -0.5 * (1 + torch.rand(N, 1, generator=g))).to(dtype)
    kw = {}
    if epilogue in ("bias_gelu", "all"):
        kw.update(bias=torch.randn(N, generator=g).to(dtype), act="gelu_tanh")
    if epilogue in ("residual", "all"):
        e = torch.randn(B, 1, 6, N, generator=g).to(dtype)                           # (B, 1, 6, N)
        kw.update(residual=torch.randn(B, L, N, generator=g).to(dtype), gate=e.chunk(6, dim=2)[2].squeeze(2))
    x8, xs = quantize_fp8_rows(x)
    w8, ws = quantize_fp8_weight(w, block)
    return x, w, x8, xs, w8, ws, kw



TINY = preset("tiny")
CASES = [  # B, L, K, N, weight block, epilogue, out dtype
    pytest.param(2, 5, TINY.model.dim, TINY.model.ffn_dim, None, "bias_gelu", torch.float32, id="tiny-gelu-fp32"),
    pytest.param(1, 3, 64, 24, None, "none", torch.float32, id="plain-fp32"),
    pytest.param(1, 37, 256, 72, 128, "bias_gelu", torch.bfloat16, id="block128-gelu-bf16"),
    pytest.param(2, 3, 96, 40, None, "residual", torch.float16, id="odd-K-residual-fp16"),
    pytest.param(1, 1, 128, 64, 128, "all", torch.bfloat16, id="L1-block-all"),
]


@pytest.mark.parametrize("B,L,K,N,block,epilogue,out_dtype", CASES)
def test_matches_fp64_reference(triton_backend, B, L, K, N, block, epilogue, out_dtype):
    x, w, x8, xs, w8, ws, kw = make_case(B, L, K, N, block, epilogue)
    out = fp8_linear(x8, xs, w8, ws, out_dtype=out_dtype, **kw)
    ref = fp8_linear_ref(x8, xs, w8, ws, out_dtype=F64, compute_dtype=F64, **kw)
    low = fp8_linear_ref(x8, xs, w8, ws, out_dtype=out_dtype, **kw)
    assert out.shape == (B, L, N) and out.dtype == out_dtype
    assert_calibrated(out, low, ref, floor=1e-5)


@pytest.mark.parametrize("B,L,K,N,block,epilogue,out_dtype", CASES)
@pytest.mark.parametrize("quant_in_gemm", [False, True])
def test_tma_tiles_match_pointer_tiles(triton_backend, B, L, K, N, block, epilogue, out_dtype, quant_in_gemm):
    """TMA (descriptor loads, zero fill past the edges) computes what the pointer loads do, bit for
    bit (same tiles, same order), and so matches the fp64 reference too."""
    from csrc_triton.fp8_linear import _fp8_linear_kernel
    from lpm_rt.ops._launch import override_tiles

    x, w, x8, xs, w8, ws, kw = make_case(B, L, K, N, block, epilogue)
    a, a_s = (x, None) if quant_in_gemm else (x8, xs)
    with override_tiles(_fp8_linear_kernel, dict(BLOCK_M=16, TMA=False), 4):     # several row tiles
        plain = fp8_linear(a, a_s, w8, ws, out_dtype=out_dtype, **kw)
    with override_tiles(_fp8_linear_kernel, dict(BLOCK_M=16, TMA=True), 4):
        out = fp8_linear(a, a_s, w8, ws, out_dtype=out_dtype, **kw)
    assert torch.equal(out, plain)
    if not quant_in_gemm:
        assert_calibrated(out, fp8_linear_ref(x8, xs, w8, ws, out_dtype=out_dtype, **kw),
                          fp8_linear_ref(x8, xs, w8, ws, out_dtype=F64, compute_dtype=F64, **kw), floor=1e-5)


def test_tma_tiles_refuse_unaligned_rows(triton_backend):
    from csrc_triton.fp8_linear import _fp8_linear_kernel
    from lpm_rt.ops._launch import override_tiles

    x, w, x8, xs, w8, ws, kw = make_case(1, 3, 64, 24, None, "none")
    wide = torch.zeros(24, 72, dtype=w8.dtype)                          # rows 72 bytes apart
    wide[:, :64] = w8
    with override_tiles(_fp8_linear_kernel, dict(TMA=True), 4), pytest.raises(ValueError, match="TMA"):
        fp8_linear(x8, xs, wide[:, :64], ws)


@pytest.mark.parametrize("block", [None, 128])
def test_fp8_path_sqnr(triton_backend, block):
    x, w, x8, xs, w8, ws, kw = make_case(2, 9, 256, 48, block, "all")
    out = fp8_linear(x8, xs, w8, ws, **kw)
    y = torch.nn.functional.gelu(x.double() @ w.double().T + kw["bias"].double(), approximate="tanh")
    exact = kw["residual"].double() + kw["gate"].double() * y
    assert_sqnr(out, exact, min_db=25.0, min_cos=0.995, name="fp8 layer vs unquantized")
    assert_sqnr(out - kw["residual"].double(), exact - kw["residual"].double(), min_db=25.0, min_cos=0.995,
                name="gated branch alone")


@pytest.mark.parametrize("B,L,K,N,block,epilogue,x_dtype", [
    pytest.param(2, 5, 96, 40, None, "residual", torch.bfloat16, id="odd-K-residual-bf16"),
    pytest.param(1, 37, 256, 72, 128, "bias_gelu", torch.float32, id="block128-gelu-fp32"),
    pytest.param(1, 1, 128, 64, None, "none", torch.float16, id="L1-fp16"),
    pytest.param(2, 5, 96, 200, None, "residual", torch.bfloat16, id="N200-quantize-first-bf16"),
    pytest.param(1, 37, 256, 160, 128, "bias_gelu", torch.float32, id="N160-quantize-first-block128-fp32"),
])
def test_quantizes_activations_inside_the_gemm(triton_backend, monkeypatch, B, L, K, N, block, epilogue, x_dtype):
    """x_scale=None: per-token scales and e4m3 codes as quantize_fp8_rows makes them -- inside the
    GEMM (a first pass over K in every N tile) while N <= QUANT_SPLIT_N, else by the row-quantization
    kernel in its own launch before the e4m3 GEMM. Either way the output is bit-identical to
    quantizing with torch first (a zero row included: its scale is the 1e-12 floor), and the
    reference agrees."""
    from lpm_rt.ops import _launch
    from lpm_rt.ops.fp8_linear import quantize_separately

    x, w, _, _, w8, ws, kw = make_case(B, L, K, N, block, epilogue, dtype=x_dtype)
    x[0, 0] = 0
    x8, xs = quantize_fp8_rows(x)
    two_launch = fp8_linear(x8, xs, w8, ws, **kw)
    launched, real = [], _launch._Jit.__getitem__

    def spy(self, grid):
        launched.append((self.fn.fn.__name__, self.constexprs.get("QUANT_X")))
        return real(self, grid)
    monkeypatch.setattr(_launch._Jit, "__getitem__", spy)
    fused = fp8_linear(x, None, w8, ws, **kw)
    if quantize_separately(N):
        assert launched == [("_quantize_rows_kernel", None), ("_fp8_linear_kernel", False)]
    else:
        assert launched == [("_fp8_linear_kernel", True)]
    assert torch.equal(fused, two_launch)
    assert torch.equal(fp8_linear_ref(x, None, w8, ws, **kw), fp8_linear_ref(x8, xs, w8, ws, **kw))


def test_row_scales_are_the_reciprocal_product(triton_backend):
    """Row scales are amax * fp32(1/448): what torch computes for ``amax / 448`` on a GPU (a
    division by a Python scalar becomes a product with its reciprocal there, a true division on
    the CPU), so the reference is the same on both and the row-quantization kernel matches it bit
    for bit. On bf16 rows the two forms differ by an ulp in many rows and such an ulp flips the
    e4m3 codes of values on a rounding tie (an H200 run: 4241 of 9360 rows)."""
    from lpm_rt.ops.fp8_linear import _quantize_rows_triton

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g).bfloat16()
    amax = x.abs().amax(-1).float()
    q, s = quantize_fp8_rows(x)
    assert torch.equal(s, amax * torch.tensor(1 / 448, dtype=torch.float32))
    assert (s != amax / torch.full_like(amax, 448.0)).any()                # the forms do differ here
    qt, st = _quantize_rows_triton(x)
    assert torch.equal(st, s) and torch.equal(qt.view(torch.uint8), q.view(torch.uint8))


def test_launcher_really_launches_triton(triton_backend, monkeypatch):
    launches = spy_triton(monkeypatch, "fp8_linear", "_fp8_linear_kernel")
    x, w, x8, xs, w8, ws, kw = make_case(1, 4, 128, 70, None, "none")
    out = fp8_linear(x8, xs, w8, ws)
    assert launches == [(2,)] and torch.isfinite(out).all()


def test_bad_inputs_raise(triton_backend):
    x, w, x8, xs, w8, ws, kw = make_case(1, 4, 96, 16, None, "none")
    with pytest.raises(TypeError):
        fp8_linear(x, xs, w8, ws)
    with pytest.raises(TypeError, match="without scales must be bf16/fp16/fp32"):
        fp8_linear(x8, None, w8, ws)
    with pytest.raises(ValueError, match="w_scale"):
        fp8_linear(x8, xs, w8, ws[:, None].expand(16, 2).contiguous())


@pytest.mark.gpu
@pytest.mark.parametrize("block,fast_accum", [(None, True), (None, False), (128, False)])
def test_gpu_lpm17b_ffn_up(gpu_triton, block, fast_accum):
    """lpm-17b FFN up-projection on a 6-frame 480P chunk: [9360 x 5120] x [5120 x 13824] + bias + GELU.
    Promoting every 128 products (1x128 blocks always, per-channel scales with FAST_ACCUM off): the
    calibrated bound. FAST_ACCUM (the per-channel tiles' default: the MMA's own accumulator over
    all of K, torch._scaled_mm(use_fast_accum=True)'s trade) adds its rounding to the bf16
    output's: relative L2 within 1.5x the output rounding alone (H200: 2.0e-3 vs 1.66e-3) and the
    worst element within twice the calibrated bound (0.043 vs 0.032); a dropped K slab or a wrong
    scale misses both by orders of magnitude."""
    import contextlib

    from csrc_triton.fp8_linear import _fp8_linear_kernel
    from lpm_rt.ops._launch import override_tiles

    m = preset("lpm-17b").model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6 * 1560, m.dim, generator=g).cuda().bfloat16()
    w = (torch.randn(m.ffn_dim, m.dim, generator=g) * m.dim ** -0.5).cuda().bfloat16()
    bias = torch.randn(m.ffn_dim, generator=g).cuda().bfloat16()
    x8, xs = quantize_fp8_rows(x)
    w8, ws = quantize_fp8_weight(w, block)
    tiles = override_tiles(_fp8_linear_kernel, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8,
                                                    FAST_ACCUM=False, TMA=False), 8, 3) \
        if block is None and not fast_accum else contextlib.nullcontext()
    with tiles:
        out = fp8_linear(x8, xs, w8, ws, bias, act="gelu_tanh")
    ref = fp8_linear_ref(x8, xs, w8, ws, bias, act="gelu_tanh", out_dtype=torch.float32)
    low = fp8_linear_ref(x8, xs, w8, ws, bias, act="gelu_tanh", out_dtype=torch.bfloat16)
    if fast_accum:
        rel = lambda a: ((a.double() - ref.double()).norm() / ref.double().norm()).item()   # noqa: E731
        assert rel(out) <= 1.5 * rel(low), f"rel L2 {rel(out):.3e} vs the output rounding {rel(low):.3e}"
        bound = 2 * (low.double() - ref.double()).abs().max().item() + 1e-3
        assert_calibrated(out, low, ref, floor=bound + 1e-3)                # i.e. <= 2x the bound
    else:
        assert_calibrated(out, low, ref, floor=1e-3)
    exact = torch.nn.functional.gelu(x.float() @ w.float().T + bias.float(), approximate="tanh")
    assert_sqnr(out, exact, min_db=25.0, min_cos=0.995)


@pytest.mark.gpu
def test_gpu_lpm17b_ffn_down_bf16_input(gpu_triton):
    """lpm-17b FFN down-projection with the GELU's bf16 output as input ([9360 x 13824] x [13824 x
    5120] + bias + gated residual): N is 40 tiles wide, so the row quantizer runs first. Its scales
    (amax times fp32(1/448)) and IEEE divisions are torch's, so the output is the torch-quantized
    GEMM's bit for bit; SQNR against the unquantized layer; the in-GEMM form (approximate
    division) agrees."""
    import importlib

    fl = importlib.import_module("lpm_rt.ops.fp8_linear")
    m = preset("lpm-17b").model
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(1, 6 * 1560, m.ffn_dim, generator=g), approximate="tanh").cuda().bfloat16()
    w = (torch.randn(m.dim, m.ffn_dim, generator=g) * m.ffn_dim ** -0.5).cuda().bfloat16()
    bias = torch.randn(m.dim, generator=g).cuda().bfloat16()
    res = torch.randn(1, 6 * 1560, m.dim, generator=g).cuda().bfloat16()
    gate = torch.randn(1, 1, m.dim, generator=g).cuda()
    w8, ws = quantize_fp8_weight(w)
    assert fl.quantize_separately(m.dim)
    out = fp8_linear(x, None, w8, ws, bias, residual=res, gate=gate)
    assert torch.equal(out, fp8_linear(*quantize_fp8_rows(x), w8, ws, bias, residual=res, gate=gate))
    exact = res.double() + gate.double() * (x.double() @ w.double().T + bias.double())
    assert_sqnr(out.double() - res.double(), exact - res.double(), min_db=25.0, min_cos=0.995, name="gated branch")
    prev, fl.QUANT_SPLIT_N = fl.QUANT_SPLIT_N, 1 << 62
    try:
        in_gemm = fp8_linear(x, None, w8, ws, bias, residual=res, gate=gate)
    finally:
        fl.QUANT_SPLIT_N = prev
    assert_sqnr(out.double() - res.double(), in_gemm.double() - res.double(), min_db=40.0, min_cos=0.9999,
                name="vs in-GEMM")
