"""cache_write (Triton, interpreter on CPU) against the fp64 reference.

Pages and scales are poisoned (NaN) before each call: written slots must come back finite and
every slot the mapping does not name must still be NaN afterwards. Slot mappings send each
page-sized group of tokens to a random page, with the offsets inside the page shuffled.
"""

from __future__ import annotations


import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.model.rope import grid_positions, rope_apply, rope_cos_sin
from lpm_rt.ops import cache_write, cache_write_ref
from lpm_rt.ops.cache_write import FP8_MAX

from _checks import assert_calibrated, assert_sqnr, poison_, spy_triton


def make_case(N, H, D, page_size, P, dtype=torch.float32, rope=True, seed=0):
    """k, v as strided views of a fused qkv projection, slots, and RoPE tables from real positions."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(N, 3, H, D, generator=g).to(dtype)                     # (N, 3, H, D)
    k, v = qkv[:, 1], qkv[:, 2]
    pages = torch.randperm(P, generator=g)[: N // page_size]
    offs = torch.stack([torch.randperm(page_size, generator=g) for _ in range(N // page_size)])
    slots = (pages[:, None] * page_size + offs).flatten()                   # (N,) int64
    cos = sin = None
    if rope:
        c = D // 2
        dims = (c - 2 * (c // 3), c // 3, c // 3)
        side = max(1, int(N ** 0.5))
        pos = grid_positions(torch.arange(-(-N // (side * side))) - 3, side, side)[:N]
        cos, sin = rope_cos_sin(pos, dims)
    return k, v, slots, cos, sin


def new_pages(P, page_size, H, D, dtype):
    kp, vp = (poison_(torch.empty(P, page_size, H, D, dtype=dtype)) for _ in range(2))
    scales = (poison_(torch.empty(P, H)), poison_(torch.empty(P, H))) if dtype == torch.float8_e4m3fn else (None, None)
    return kp, vp, *scales


def written_mask(P, page_size, slots):
    m = torch.zeros(P * page_size, dtype=torch.bool)
    m[slots] = True
    return m.view(P, page_size)


def check_untouched(pages, mask):
    """Slots outside the mapping were not written (still the poison)."""
    raw = pages.view(torch.uint8) if pages.dtype == torch.float8_e4m3fn else pages
    rest = raw[~mask]
    assert (rest == 0x7F).all() if pages.dtype == torch.float8_e4m3fn else torch.isnan(rest).all(), \
        "kernel wrote outside the slot mapping"


TINY, DEMO = preset("tiny"), preset("demo")


@pytest.mark.parametrize("N,H,D,page_size,P,dtype,rope", [
    pytest.param(16, 2, TINY.model.head_dim, TINY.stream.page_size, 5, torch.float32, True, id="tiny-fp32"),
    pytest.param(240, 1, DEMO.model.head_dim, 120, 4, torch.bfloat16, True, id="p120-bf16"),
    pytest.param(64, 2, 64, DEMO.stream.page_size, 3, torch.float16, False, id="demo-fp16-norope"),
])
def test_matches_fp64_reference(triton_backend, N, H, D, page_size, P, dtype, rope):
    k, v, slots, cos, sin = make_case(N, H, D, page_size, P, dtype, rope)
    kp, vp, _, _ = new_pages(P, page_size, H, D, dtype)
    cache_write(k, v, kp, vp, slots, cos=cos, sin=sin)
    k64 = rope_apply(k.double(), cos.double(), sin.double()) if rope else k.double()
    low_k = rope_apply(k, cos, sin) if rope else k                            # the ref's math in k's dtype
    flat = lambda p: p.view(-1, H, D)[slots]                                  # noqa: E731
    assert_calibrated(flat(kp), low_k, k64, floor=1e-6, name="k_pages")
    assert torch.equal(flat(vp), v), "v pages are a plain copy"
    mask = written_mask(P, page_size, slots)
    check_untouched(kp, mask), check_untouched(vp, mask)


@pytest.mark.parametrize("dtype,page_size,D", [(torch.float32, 8, 16), (torch.bfloat16, 120, 32)])
def test_fp8_pages(triton_backend, dtype, page_size, D):
    N, H, P = 2 * page_size, 2, 5
    k, v, slots, cos, sin = make_case(N, H, D, page_size, P, dtype)
    kp, vp, ks, vs = new_pages(P, page_size, H, D, torch.float8_e4m3fn)
    cache_write(k, v, kp, vp, slots, ks, vs, cos, sin)
    rkp, rvp, rks, rvs = new_pages(P, page_size, H, D, torch.float8_e4m3fn)
    cache_write_ref(k, v, rkp, rvp, slots, rks, rvs, cos, sin)
    pages_written = slots.div(page_size, rounding_mode="floor").unique()
    for name, got_s, ref_s in (("k_scale", ks, rks), ("v_scale", vs, rvs)):
        torch.testing.assert_close(got_s[pages_written], ref_s[pages_written], rtol=1e-2, atol=0, msg=name)
        assert torch.isnan(got_s[[p for p in range(P) if p not in pages_written.tolist()]]).all()
    k64 = rope_apply(k.double(), cos.double(), sin.double())
    for name, pages, sc, exact in (("k", kp, ks, k64), ("v", vp, vs, v.double())):
        deq = pages.double() * sc.double()[:, None, :, None]                   # (P, page_size, H, D)
        got = deq.view(-1, H, D)[slots]
        assert_sqnr(got, exact, min_db=30.0, min_cos=0.999, name=f"{name} dequantized")
        ref_codes = (rkp if name == "k" else rvp).view(-1, H, D)[slots].view(torch.uint8)
        same = (pages.view(-1, H, D)[slots].view(torch.uint8) == ref_codes).double().mean().item()
        assert same >= 0.97, f"{name}: only {same:.3f} of fp8 codes equal the reference's"
        check_untouched(pages, written_mask(P, page_size, slots))


@pytest.mark.parametrize("dtype,qk_norm", [(torch.bfloat16, False), (torch.float32, True)])
def test_fp8_k_pages_beside_wider_v_pages(triton_backend, monkeypatch, dtype, qk_norm):
    """An fp8k pool's write: K rotated and quantized with its page scales (as the fp8 pool's),
    V copied as is into V pages of the activations' dtype, no V scale; with the fused q/k norms too.
    A V scale, or fp8 V beside wider K, is refused."""
    from csrc_triton.cache_write import _cache_write_kernel

    from _checks import spy_constexprs

    N, H, D, page_size, P = 16, 2, 16, 8, 4
    k, v, slots, cos, sin = make_case(N, H, D, page_size, P, dtype)
    q = torch.randn(N, H, D).to(dtype)
    norm = (torch.rand(H * D) + 0.5, torch.rand(H * D) + 0.5, 1e-6) if qk_norm else None
    if norm is not None:
        norm = (norm[0].to(dtype), norm[1].to(dtype), norm[2])
    kp, _, ks, _ = new_pages(P, page_size, H, D, torch.float8_e4m3fn)
    _, vp, _, _ = new_pages(P, page_size, H, D, dtype)
    rkp, _, rks, _ = new_pages(P, page_size, H, D, torch.float8_e4m3fn)
    _, rvp, _, _ = new_pages(P, page_size, H, D, dtype)
    launches = spy_constexprs(monkeypatch, _cache_write_kernel)
    got_q = cache_write(k, v, kp, vp, slots, ks, None, cos, sin, q=q, qk_norm=norm)
    want_q = cache_write_ref(k, v, rkp, rvp, slots, rks, None, cos, sin, q=q, qk_norm=norm)
    assert launches[-1]["V16"] and launches[-1]["FP8"]
    pages_written = slots.div(page_size, rounding_mode="floor").unique()
    torch.testing.assert_close(ks[pages_written], rks[pages_written], rtol=1e-2, atol=0)
    same = (kp.view(-1, H, D)[slots].view(torch.uint8) == rkp.view(-1, H, D)[slots].view(torch.uint8))
    assert same.double().mean().item() >= 0.97
    assert torch.equal(vp.view(-1, H, D)[slots], v.to(dtype)), "v pages are a plain copy"
    torch.testing.assert_close(got_q, want_q, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
    mask = written_mask(P, page_size, slots)
    check_untouched(kp, mask), check_untouched(vp, mask)
    _, vp8, _, vs8 = new_pages(P, page_size, H, D, torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="v_scale given"):
        cache_write(k, v, kp, vp, slots, ks, vs8, cos, sin)
    with pytest.raises(TypeError, match="share a dtype"):
        cache_write(k, v, vp, vp8, slots, None, vs8, cos, sin)


def test_launcher_really_launches_triton(triton_backend, monkeypatch):
    launches = spy_triton(monkeypatch, "cache_write", "_cache_write_kernel")
    k, v, slots, cos, sin = make_case(16, 1, 16, 8, 3)
    kp, vp, _, _ = new_pages(3, 8, 1, 16, torch.float32)
    cache_write(k, v, kp, vp, slots, cos=cos, sin=sin)
    assert launches == [(2, 1, 2)]
    assert torch.isfinite(kp.view(-1, 1, 16)[slots]).all()


def test_partial_page_raises(triton_backend):
    k, v, slots, cos, sin = make_case(16, 1, 16, 8, 3)
    kp, vp, _, _ = new_pages(3, 8, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="whole pages"):
        cache_write(k[:12], v[:12], kp, vp, slots[:12], cos=cos[:12], sin=sin[:12])


@pytest.mark.parametrize("dtype,page_size", [(torch.float32, 8), (torch.bfloat16, 120)])
def test_fused_q_rope(triton_backend, dtype, page_size):
    """q rides along in the same launch: rotated and returned in token order, pages unchanged."""
    N, H, D, P = 2 * page_size, 2, 32, 4
    k, v, slots, cos, sin = make_case(N, H, D, page_size, P, dtype)
    q = torch.randn(N, H, 2 * D).to(dtype)[..., ::2]                          # strided view
    kp, vp, _, _ = new_pages(P, page_size, H, D, dtype)
    rkp, rvp, _, _ = new_pages(P, page_size, H, D, dtype)
    got = cache_write(k, v, kp, vp, slots, cos=cos, sin=sin, q=q)
    want = cache_write_ref(k, v, rkp, rvp, slots, cos=cos, sin=sin, q=q)
    exact = rope_apply(q.double(), cos.double(), sin.double())
    assert got.shape == q.shape and got.dtype == dtype
    assert_calibrated(got, want, exact, floor=1e-6, name="rope(q)")
    check_untouched(kp, written_mask(P, page_size, slots))
    assert cache_write(k, v, kp, vp, slots, cos=cos, sin=sin) is None


def _offset_keys(k, H, D, seed=1, size=4.0):
    """Keys with a large shared per-channel offset, as keys after RMSNorm have in trained models."""
    g = torch.Generator().manual_seed(seed)
    return k + size * torch.randn(H, D, generator=g).to(k.dtype)


@pytest.mark.parametrize("pages_dtype", [torch.float32, torch.float8_e4m3fn])
def test_k_smoothing_matches_reference(triton_backend, pages_dtype):
    """k_shift is subtracted from the rotated keys only (V and q untouched), in the kernel as in the ref."""
    N, H, D, page_size, P = 16, 2, 16, 8, 4
    k, v, slots, cos, sin = make_case(N, H, D, page_size, P)
    k = _offset_keys(k, H, D)
    shift = torch.randn(H, D, generator=torch.Generator().manual_seed(5))
    q = torch.randn(N, H, D)
    kp, vp, ks, vs = new_pages(P, page_size, H, D, pages_dtype)
    q_rot = cache_write(k, v, kp, vp, slots, ks, vs, cos, sin, q=q, k_shift=shift)
    exact = rope_apply(k.double(), cos.double(), sin.double()) - shift.double()
    got = kp.double() if ks is None else kp.double() * ks.double()[:, None, :, None]
    if pages_dtype == torch.float32:
        assert_calibrated(got.view(-1, H, D)[slots], rope_apply(k, cos, sin) - shift, exact, floor=1e-6,
                          name="smoothed k")
        assert torch.equal(vp.view(-1, H, D)[slots], v)
    else:
        assert_sqnr(got.view(-1, H, D)[slots], exact, min_db=30.0, min_cos=0.999, name="smoothed k fp8")
    torch.testing.assert_close(q_rot, rope_apply(q, cos, sin), rtol=1e-5, atol=1e-5)


def test_k_smoothing_keeps_attention_and_sharpens_fp8(triton_backend):
    """Subtracting one vector per head from every key leaves attention unchanged (fp32 pages:
    same output to fp32 rounding) and, with keys sharing a large offset, raises the fp8
    pages' attention SQNR -- the reason the runtime smooths K."""
    from lpm_rt.ops import paged_attention_ref
    N, H, D, page_size, P = 64, 2, 32, 16, 4
    k, v, slots, cos, sin = make_case(N, H, D, page_size, P, seed=3)
    k = _offset_keys(k, H, D, size=6.0)
    q = torch.randn(1, 8, H, D, generator=torch.Generator().manual_seed(4))
    k_rot = rope_apply(k, cos, sin)
    shift = k_rot.mean(0)                                                      # what the runtime uses
    table = (slots.view(-1, page_size)[:, 0] // page_size).to(torch.int32)[None]
    kv_len = torch.tensor([N], dtype=torch.int32)
    exact = torch.softmax(torch.einsum("qhd,khd->hqk", q[0].double(), k_rot.double()) / D ** 0.5, -1)
    exact = torch.einsum("hqk,khd->qhd", exact, v.double())[None]
    outs = {}
    for dtype in (torch.float32, torch.float8_e4m3fn):
        for smooth in (False, True):
            kp, vp, ks, vs = new_pages(P, page_size, H, D, dtype)
            cache_write(k, v, kp, vp, slots, ks, vs, cos, sin, k_shift=shift if smooth else None)
            outs[dtype, smooth] = paged_attention_ref(q, kp, vp, table, kv_len, ks, vs).double()
    torch.testing.assert_close(outs[torch.float32, True], outs[torch.float32, False], rtol=1e-4, atol=1e-5)
    sq = lambda x: 10 * torch.log10(exact.pow(2).sum() / (x - exact).pow(2).sum()).item()   # noqa: E731
    plain, smoothed = sq(outs[torch.float8_e4m3fn, False]), sq(outs[torch.float8_e4m3fn, True])
    print(f"K smoothing: fp8 attention SQNR {plain:.1f} -> {smoothed:.1f} dB")
    assert smoothed >= plain + 3.0, f"K smoothing: fp8 attention SQNR {plain:.1f} -> {smoothed:.1f} dB"


@pytest.mark.parametrize("dtype,page_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float8_e4m3fn)])
def test_fused_qk_norm(triton_backend, dtype, page_dtype):
    """QK_NORM: the full-width RMSNorms of q and k in the same launch (one program walks all
    heads). Against the reference that norms with the module's rounding, then ropes and
    writes: calibrated for fp32 (the rotated q) and fp32 pages; fp8 pages by SQNR and code
    agreement. Heads carry very different scales, so a per-head norm would be far off."""
    N, H, D, P, ps = 16, 4, 16, 5, 8
    k, v, slots, cos, sin = make_case(N, H, D, ps, P, dtype)
    g = torch.Generator().manual_seed(5)
    scale = torch.tensor([0.1, 1.0, 3.0, 10.0])[None, :, None]
    k = (k.float() * scale).to(dtype)
    q = (torch.randn(N, H, D, generator=g) * scale).to(dtype)
    qw, kw = ((1 + 0.3 * torch.randn(H * D, generator=g)).to(dtype) for _ in range(2))
    shift = torch.randn(H, D, generator=g) if page_dtype == torch.float8_e4m3fn else None
    kp, vp, ks, vs = new_pages(P, ps, H, D, page_dtype)
    rkp, rvp, rks, rvs = new_pages(P, ps, H, D, page_dtype)
    got = cache_write(k, v, kp, vp, slots, ks, vs, cos, sin, q=q, k_shift=shift, qk_norm=(qw, kw, 1e-6))
    want = cache_write_ref(k, v, rkp, rvp, slots, rks, rvs, cos, sin, q=q, k_shift=shift, qk_norm=(qw, kw, 1e-6))
    dbl = cache_write_ref(k.double(), v.double(), *new_pages(P, ps, H, D, torch.float64)[:2], slots, cos=cos.double(),
                          sin=sin.double(), q=q.double(), qk_norm=(qw.double(), kw.double(), 1e-6))
    if dtype == torch.float32:
        assert_calibrated(got, want, dbl, floor=1e-5, name="normed, rotated q")
        written = written_mask(P, ps, slots)
        assert_calibrated(kp[written], rkp[written], rkp[written].double(), floor=1e-5, name="normed k pages")
    else:
        assert_sqnr(got, dbl, min_db=40.0, min_cos=0.9999, name="normed, rotated q (bf16)")
        same = (kp.view(torch.uint8) == rkp.view(torch.uint8)).float().mean().item()
        assert same >= 0.97, f"only {same:.3f} of fp8 codes equal the reference's"
        pg = slots.div(ps, rounding_mode="floor").unique()
        assert_calibrated(ks[pg], rks[pg], rks[pg].double(), floor=1e-3 * rks[pg].abs().max().item(), name="k scales")
    check_untouched(kp, written_mask(P, ps, slots))


def test_qk_norm_launches_one_program_per_page_and_tensor(triton_backend, monkeypatch):
    launches = spy_triton(monkeypatch, "cache_write", "_cache_write_kernel")
    k, v, slots, cos, sin = make_case(16, 4, 16, 8, 3)
    kp, vp, _, _ = new_pages(3, 8, 4, 16, torch.float32)
    w = torch.ones(64)
    cache_write(k, v, kp, vp, slots, cos=cos, sin=sin, q=k.clone(), qk_norm=(w, w, 1e-6))
    assert launches == [(2, 1, 3)]
    with pytest.raises(ValueError, match="qk_norm needs q"):
        cache_write(k, v, kp, vp, slots, cos=cos, sin=sin, qk_norm=(w, w, 1e-6))


@pytest.mark.gpu
def test_gpu_lpm17b_fp8_pages(gpu_triton):
    """lpm-17b pages (120 tokens x 128 channels per head, 8 of the 40 heads) for a 6-frame 480P
    chunk: every page's per-head scale is the max of what it holds / 448 (rtol 1e-2 leaves the
    rotated keys' rounding; a max reduced wrong is off by percents), and the pages dequantize to fp64."""
    s = preset("lpm-17b")
    N, H, D, ps = 6 * s.stream.tokens_per_frame, 8, s.model.head_dim, s.stream.page_size
    P = N // ps + 3
    k, v, slots, cos, sin = (t.cuda() for t in make_case(N, H, D, ps, P, torch.bfloat16))
    kp, vp, ks, vs = (t.cuda() for t in new_pages(P, ps, H, D, torch.float8_e4m3fn))
    cache_write(k, v, kp, vp, slots, ks, vs, cos, sin)
    rkp, rvp, rks, rvs = (t.cuda() for t in new_pages(P, ps, H, D, torch.float8_e4m3fn))
    cache_write_ref(k, v, rkp, rvp, slots, rks, rvs, cos, sin)
    written = slots.div(ps, rounding_mode="floor").unique()
    for name, got, want in (("k_scale", ks, rks), ("v_scale", vs, rvs)):
        torch.testing.assert_close(got[written], want[written], rtol=1e-2, atol=0, msg=name)
    k64 = rope_apply(k.double(), cos.double(), sin.double())
    for name, pages, sc, exact in (("k", kp, ks, k64), ("v", vp, vs, v.double())):
        got = (pages.double() * sc.double()[:, None, :, None]).view(-1, H, D)[slots]
        assert_sqnr(got, exact, min_db=30.0, min_cos=0.999, name=f"{name} dequantized")
