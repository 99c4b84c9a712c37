"""paged_attention (Triton, interpreter on CPU) against the fp64 reference.

Each case scrambles the page table (a random permutation of a pool larger than needed), uses
kv_lens that are not page multiples, a non-contiguous q view, and runs with torch's
fill-uninitialized-memory mode so every output/workspace element starts as NaN.
"""

from __future__ import annotations


import pytest
import torch

import lpm_rt.ops as ops
from lpm_rt.config import preset
from lpm_rt.ops import paged_attention, paged_attention_ref
from lpm_rt.ops.cache_write import FP8_MAX
from lpm_rt.ops.paged_attention import gather_pages

from _checks import assert_calibrated, assert_sqnr, spy_constexprs, spy_triton

pytestmark = pytest.mark.usefixtures("poison_allocations")   # unwritten outputs show as NaN


def make_case(B, Lq, H, D, page_size, kv_lens, dtype=torch.float32, kv_dtype=None,
              spare_pages=3, device="cpu", seed=0):
    """Inputs built as the cache holds them. Returns (q, k_pages, v_pages, table, lens, k_scale, v_scale)."""
    g = torch.Generator().manual_seed(seed)
    kv_dtype = kv_dtype or dtype
    max_pages = max(-(-n // page_size) for n in kv_lens) + 1
    P = B * max_pages + spare_pages
    q = torch.randn(B, Lq, H, 2 * D, generator=g).to(device, dtype)[..., ::2]   # strided view, stride_d 2
    kf = torch.randn(P, page_size, H, D, generator=g) * torch.rand(P, 1, H, 1, generator=g).add(0.25)
    vf = torch.randn(P, page_size, H, D, generator=g) * torch.rand(P, 1, H, 1, generator=g).add(0.25)
    table = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).to(torch.int32)
    lens = torch.tensor(kv_lens, dtype=torch.int32)
    if kv_dtype == torch.float8_e4m3fn:
        ks = kf.abs().amax(dim=(1, 3)) / FP8_MAX                          # (P, H)
        vs = vf.abs().amax(dim=(1, 3)) / FP8_MAX
        kp = (kf / ks[:, None, :, None]).to(kv_dtype)
        vp = (vf / vs[:, None, :, None]).to(kv_dtype)
        return q, kp.to(device), vp.to(device), table.to(device), lens, ks.to(device), vs.to(device)
    return q, kf.to(device, kv_dtype), vf.to(device, kv_dtype), table.to(device), lens, None, None


def low_precision(q, kp, vp, table, lens, ks, vs, sm_scale=None):
    """The kernel's math with its rounding points, done in one block: scores from q-dtype (or fp8)
    operands accumulated in fp32, P (times the v scale) rounded to q's dtype before P.V, fp32
    accumulation, output rounded to q's dtype. The 'same math in low precision' of the bound."""
    B, Lq, H, D = q.shape
    sm_scale = D ** -0.5 if sm_scale is None else sm_scale
    out = torch.empty_like(q)
    for b in range(B):
        n = int(lens[b])
        k = gather_pages(kp, None, table[b], n, torch.float32)                 # (n, H, D) raw values
        v = gather_pages(vp, None, table[b], n, torch.float32)
        ids = table[b].long().repeat_interleave(kp.shape[1])[:n]
        ksc = ks[ids].float() if ks is not None else torch.ones(n, H)         # (n, H) per-token scale
        vsc = vs[ids].float() if vs is not None else torch.ones(n, H)
        s = torch.einsum("qhd,nhd->hqn", q[b].float(), k) * (sm_scale * ksc.T[:, None, :])
        p = torch.exp(s - s.amax(-1, keepdim=True)) if n else s               # (H, Lq, n)
        pv = (p * vsc.T[:, None, :]).to(q.dtype).float()
        o = torch.einsum("hqn,nhd->qhd", pv, v) / p.sum(-1).clamp_min(1e-30).T[:, :, None]
        out[b] = o.to(q.dtype)
    return out


def references(q, kp, vp, table, lens, ks, vs, sm_scale=None):
    """(fp64 reference, the same math in q's precision)."""
    ref = paged_attention_ref(q.double(), kp, vp, table, lens, ks, vs, sm_scale)
    return ref, low_precision(q, kp, vp, table, lens, ks, vs, sm_scale)



TINY, DEMO = preset("tiny"), preset("demo")
CASES = [  # B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype, num_splits
    pytest.param(2, 5, 2, TINY.model.head_dim, TINY.stream.page_size, [37, 8], torch.float32, None, 1, id="tiny-fp32"),
    pytest.param(1, 33, 2, DEMO.model.head_dim, DEMO.stream.page_size, [70], torch.float16, None, 1, id="demo-fp16"),
    pytest.param(1, 1, 2, 64, 120, [250], torch.bfloat16, None, 3, id="p120-lq1-bf16-split"),
    pytest.param(1, 3, 1, 128, 120, [121], torch.float32, None, 1, id="d128-fp32"),
    pytest.param(2, 7, 2, 32, 8, [0, 9], torch.float16, None, 4, id="empty-row-empty-splits"),
    pytest.param(2, 4, 2, 32, 8, [19, 40], torch.bfloat16, torch.float8_e4m3fn, 1, id="fp8-pages-bf16"),
    pytest.param(1, 2, 2, 16, 8, [13], torch.float32, torch.float8_e4m3fn, 2, id="fp8-pages-fp32-split"),
    pytest.param(2, 9, 2, 32, 16, [40, 17], torch.float16, None, 1, id="p16-fp16"),
    pytest.param(1, 3, 1, 64, 256, [300], torch.bfloat16, torch.float8_e4m3fn, 2, id="p256-fp8-split"),
]


@pytest.mark.parametrize("peel", [True, False], ids=["", "last-block-in-loop"])
@pytest.mark.parametrize("B,Lq,H,D,page_size,kv_lens,dtype,kv_dtype,splits", CASES)
def test_matches_fp64_reference(triton_backend, monkeypatch, B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype,
                                splits, peel):
    """The launcher's form (key blocks gathered across pages, the range's last block before the
    loop: PEEL_LAST) and the last block inside the loop."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    args = make_case(B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype)
    assert not args[0].is_contiguous()
    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    if peel:
        out = paged_attention(*args, num_splits=splits)
    else:
        with override_tiles(_paged_attn_fwd_kernel, dict(PEEL_LAST=False), 4, 2):
            out = paged_attention(*args, num_splits=splits)
    assert launches[0]["PEEL_LAST"] is peel and not launches[0]["PAGE_TILES"]
    ref, low = references(*args)
    assert out.dtype == dtype
    assert_calibrated(out, low, ref, floor=1e-5)


@pytest.mark.parametrize("order", ["plain", "peel-last", "overlap"])
@pytest.mark.parametrize("B,Lq,H,D,page_size,kv_lens,dtype,kv_dtype,splits", CASES)
def test_page_tiles_match_fp64_reference(triton_backend, monkeypatch, B, Lq, H, D, page_size, kv_lens, dtype,
                                         kv_dtype, splits, order):
    """The PAGE_TILES form (one page per key block, tile rows past the page masked) on the same
    cases: scrambled tables, partial last pages, empty rows and splits, fp8 pages; with the range's
    last page before the loop (PEEL_LAST), and in the OVERLAP order (block j + 1's Q.K^T before block j's
    softmax; the first and last blocks peeled)."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    args = make_case(B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype)
    bn = max(16, 1 << (page_size - 1).bit_length())                      # the next power of two
    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)     # what the launch was compiled with
    tiles = dict(BLOCK_M=16, BLOCK_N=bn, PAGE_TILES=True, OVERLAP=order == "overlap", PEEL_LAST=order == "peel-last")
    with override_tiles(_paged_attn_fwd_kernel, tiles, 4, 2):
        out = paged_attention(*args, num_splits=splits)
    assert launches[0]["PAGE_TILES"] and launches[0]["BLOCK_N"] == bn
    assert launches[0]["OVERLAP"] == (order == "overlap") and launches[0]["PEEL_LAST"] == (order == "peel-last")
    ref, low = references(*args)
    assert_calibrated(out, low, ref, floor=1e-5)


@pytest.mark.parametrize("B,Lq,H,D,page_size,kv_lens,dtype,kv_dtype,splits", CASES)
def test_tma_page_tiles_match_fp64_reference(triton_backend, B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype,
                                             splits):
    """TMA_KV (page tiles through tensor descriptors, rows past the page zero-filled) on the same
    cases, with the unwritten rows of every last page poisoned (NaN): they must not leak."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    q, kp, vp, table, lens, ks, vs = make_case(B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype)
    ref, low = references(q, kp, vp, table, lens, ks, vs)
    kp, vp = kp.clone(), vp.clone()
    for b, n in enumerate(kv_lens):                                     # past kv_len in the last page
        if n % page_size:
            last = int(table[b, n // page_size])
            kp[last, n % page_size:] = float("nan")
            vp[last, n % page_size:] = float("nan")
    bn = max(16, 1 << (page_size - 1).bit_length())
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=16, BLOCK_N=bn, PAGE_TILES=True, TMA_KV=True), 4, 2):
        out = paged_attention(q, kp, vp, table, lens, ks, vs, num_splits=splits)
    assert_calibrated(out, low, ref, floor=1e-5)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_N=bn, TMA_KV=True), 4, 2):
        with pytest.raises(ValueError, match="TMA_KV needs PAGE_TILES"):
            paged_attention(q, kp, vp, table, lens, ks, vs)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=16, BLOCK_N=bn, PAGE_TILES=True, TMA_KV=True), 4, 2):
        padded = torch.zeros(*kp.shape[:3], D + 16, dtype=kp.dtype)[..., :D]   # rows of H * (D + 16)
        padded.copy_(kp)
        with pytest.raises(ValueError, match="heads adjacent"):
            paged_attention(q, padded, vp, table, lens, ks, vs)


@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlap"])
@pytest.mark.parametrize("kv_dtype,fp8_q", [(None, False), (torch.float8_e4m3fn, True)])
def test_transposed_v_loads_match_fp64_reference(triton_backend, kv_dtype, fp8_q, overlap):
    """V_TRANS_LOAD (page tiles, V read as its transpose) on V pages stored token-contiguous
    ([P, H, D, page], passed as the op's [P, page, H, D] view) and on the standard layout; FP8-Q
    included, and both in the OVERLAP order."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    q, kp, vp, table, lens, ks, vs = make_case(2, 5, 2, 32, 8, [19, 40], torch.bfloat16, kv_dtype)
    ref, low = references(q, kp, vp, table, lens, ks, vs)
    for v in (vp, vp.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)):
        with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=16, BLOCK_N=16, PAGE_TILES=True, V_TRANS_LOAD=True,
                                                         OVERLAP=overlap), 4, 2):
            out = paged_attention(q, kp, v, table, lens, ks, vs, fp8_q=fp8_q, num_splits=2)
        if fp8_q:
            assert_sqnr(out, ref, min_db=25.0, min_cos=0.995)
        else:
            assert_calibrated(out, low, ref, floor=1e-5)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_N=16, V_TRANS_LOAD=True), 4, 2):
        with pytest.raises(ValueError, match="V_TRANS_LOAD needs PAGE_TILES"):
            paged_attention(q, kp, vp, table, lens, ks, vs)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_N=16, OVERLAP=True), 4, 2):
        with pytest.raises(ValueError, match="OVERLAP needs PAGE_TILES"):
            paged_attention(q, kp, vp, table, lens, ks, vs)


def mixed_case(B, Lq, H, D, page_size, kv_lens, dtype=torch.bfloat16, device="cpu", seed=0):
    """fp8 K pages with their scales, V pages in q's dtype (no V scales)."""
    q, kp, _, table, lens, ks, _ = make_case(B, Lq, H, D, page_size, kv_lens, dtype, torch.float8_e4m3fn,
                                             device=device, seed=seed)
    _, _, vp, _, _, _, _ = make_case(B, Lq, H, D, page_size, kv_lens, dtype, device=device, seed=seed)
    return q, kp, vp, table, lens, ks, None


MIXED = [  # B, Lq, H, D, page_size, kv_lens, dtype, splits
    pytest.param(2, 5, 2, 32, 8, [19, 40], torch.bfloat16, 1, id="bf16"),
    pytest.param(2, 7, 2, 32, 8, [0, 9], torch.float16, 4, id="fp16-empty-row-empty-splits"),
    pytest.param(1, 3, 1, 64, 120, [250], torch.bfloat16, 3, id="p120-split"),
    pytest.param(1, 4, 2, 16, 8, [13], torch.float32, 2, id="fp32"),
]


@pytest.mark.parametrize("form", ["gather", "page-tiles", "overlap"])
@pytest.mark.parametrize("fp8_q", [False, True], ids=["16-bit-dots", "fp8-q"])
@pytest.mark.parametrize("B,Lq,H,D,page_size,kv_lens,dtype,splits", MIXED)
def test_fp8_k_pages_beside_16_bit_v_pages(triton_backend, monkeypatch, B, Lq, H, D, page_size, kv_lens, dtype,
                                           splits, fp8_q, form):
    """Mixed pages (V16): e4m3 K with per-page scales, V in q's dtype. Without fp8_q the dots are in
    q's type, judged by the calibrated bound; with it Q.K^T is an fp8 dot on Q quantized per block
    (P.V stays in q's type), judged by SQNR. All three key-block forms, the scales varying per page
    (an OVERLAP block softmaxed with its successor's scale fails)."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    args = mixed_case(B, Lq, H, D, page_size, kv_lens, dtype)
    ref, low = references(*args)
    bn = max(16, 1 << (page_size - 1).bit_length())
    tiles = {"gather": dict(BLOCK_M=16, BLOCK_N=16), "page-tiles": dict(BLOCK_M=16, BLOCK_N=bn, PAGE_TILES=True),
             "overlap": dict(BLOCK_M=16, BLOCK_N=bn, PAGE_TILES=True, OVERLAP=True)}[form]
    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    with override_tiles(_paged_attn_fwd_kernel, tiles, 4, 2):
        out = paged_attention(*args, fp8_q=fp8_q, num_splits=splits)
    assert launches[0]["V16"] and launches[0]["FP8_Q"] == fp8_q and not launches[0]["F16_DOTS"]
    assert out.dtype == dtype
    if fp8_q:
        assert_sqnr(out, ref, min_db=25.0, min_cos=0.995)
    else:
        assert_calibrated(out, low, ref, floor=1e-5)


def test_mixed_pages_default_and_bad_inputs(triton_backend, monkeypatch):
    """fp8_q defaults on for mixed pages (its QGMMA is the form's point) from head_dim 32 (the fp8
    MMA's K, as the h100 artifacts compile it), off for fp8 K and V; the
    launcher refuses a V scale beside 16-bit V pages, fp8 V beside 16-bit K, and fp16 dots (F16_DOTS)
    on bf16 V pages -- none is silently reinterpreted."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    paged_attention(*mixed_case(1, 3, 2, 32, 8, [21]))
    assert launches[-1]["FP8_Q"] and launches[-1]["V16"]
    q, kp, vp, table, lens, ks, _ = mixed_case(1, 3, 2, 16, 8, [21])
    paged_attention(q, kp, vp, table, lens, ks)                  # head_dim 16: below the fp8 MMA's K
    assert not launches[-1]["FP8_Q"] and launches[-1]["V16"]
    _, kp8, vp8, _, _, ks8, vs8 = make_case(1, 3, 2, 16, 8, [21], torch.bfloat16, torch.float8_e4m3fn)
    paged_attention(q, kp8, vp8, table, lens, ks8, vs8)
    assert not launches[-1]["FP8_Q"] and launches[-1]["V16"] is False
    with pytest.raises(ValueError, match="v_scale given"):
        paged_attention(q, kp, vp, table, lens, ks, vs8)
    with pytest.raises(ValueError, match="k_scale"):
        paged_attention(q, kp, vp, table, lens)
    with pytest.raises(ValueError, match="one dtype"):
        paged_attention(q, vp, vp8, table, lens, None, vs8)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=16, BLOCK_N=16, F16_DOTS=True), 4, 2):
        with pytest.raises(ValueError, match="F16_DOTS needs"):
            paged_attention(q, kp, vp, table, lens, ks, fp8_q=False)


def test_page_tiles_need_a_whole_page_per_block(triton_backend):
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    args = make_case(1, 2, 1, 16, 32, [40])
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_N=16, PAGE_TILES=True), 4, 2):
        with pytest.raises(ValueError, match="PAGE_TILES"):
            paged_attention(*args)


@pytest.mark.parametrize("B,Lq,H,D,page_size,kv_lens,dtype,kv_dtype,splits", CASES)
def test_cpu_runtime_path_matches_fp64_reference(B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype, splits):
    """The reference as the CPU runtime streams with it (``ref`` backend: upcast to fp32, output in
    q's dtype) against the fp64 formula, bound by the kernel-style low-precision math's error."""
    args = make_case(B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype)
    ref, low = references(*args)
    out = paged_attention_ref(*args)
    assert out.dtype == dtype
    assert_calibrated(out, low, ref, floor=2e-6, name="upcast")


@pytest.mark.parametrize("page_tiles", [False, True])
def test_long_query_streams(triton_backend, page_tiles):
    """Lq past 10k rows (lpm-17b's 6-frame chunk is 9360): 161 query tiles over fp8 pages with a
    partial last page, both key-block forms."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    args = make_case(1, 10_300, 1, 16, 8, [45], torch.bfloat16, torch.float8_e4m3fn)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=64, BLOCK_N=8 if page_tiles else 16,
                                                     PAGE_TILES=page_tiles), 4, 2):
        out = paged_attention(*args)
    ref, low = references(*args)
    assert_calibrated(out, low, ref, floor=1e-5)


@pytest.mark.parametrize("page_tiles", [False, True])
def test_fp8_pages_under_bf16_q_take_fp16_dots(triton_backend, monkeypatch, page_tiles):
    """fp8 pages under bf16 q run their 16-bit dots in fp16 by default (F16_DOTS; with fp8_q that is
    P.V alone), under fp16 q never; the bf16-dot form stays selectable (for the tile sweep) and both
    match the fp64 reference."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    args = make_case(2, 5, 2, 32, 8, [19, 40], torch.bfloat16, torch.float8_e4m3fn)
    ref, low = references(*args)
    tiles = dict(BLOCK_M=16, BLOCK_N=16, PAGE_TILES=True) if page_tiles else dict(BLOCK_M=16, BLOCK_N=16)
    outs = {}
    for f16 in (None, False):
        with override_tiles(_paged_attn_fwd_kernel, tiles if f16 is None else {**tiles, "F16_DOTS": f16}, 4, 2):
            outs[f16] = paged_attention(*args, num_splits=2)
        assert launches[-1]["F16_DOTS"] is (f16 is None)
        assert_calibrated(outs[f16], low, ref, floor=1e-5)
    assert not torch.equal(outs[None], outs[False])                     # two roundings: two paths
    big = args[0].clone()
    big[0, 1, 0] *= 3e5                                               # one query row past fp16's range
    ref_big, low_big = references(big, *args[1:])
    with override_tiles(_paged_attn_fwd_kernel, tiles, 4, 2):
        out_big = paged_attention(big, *args[1:], num_splits=2)
    assert launches[-1]["F16_DOTS"] is True
    assert_calibrated(out_big, low_big, ref_big, floor=1e-5)         # scaled by a power of two, not clipped
    paged_attention(args[0].half(), *args[1:])
    assert launches[-1]["F16_DOTS"] is False
    paged_attention(*args, fp8_q=True)                                # fp8 Q.K^T, fp16 P.V
    assert launches[-1]["F16_DOTS"] is True and launches[-1]["FP8_Q"] is True
    with override_tiles(_paged_attn_fwd_kernel, {**tiles, "F16_DOTS": True}, 4, 2):
        with pytest.raises(ValueError, match="F16_DOTS needs"):
            paged_attention(args[0].half(), *args[1:])


@pytest.mark.parametrize("page_tiles", [False, True])
@pytest.mark.parametrize("Lq,page_size,splits", [(1, 8, 1), (20, 120, 2)])
def test_fp8_q_sqnr(triton_backend, monkeypatch, Lq, page_size, splits, page_tiles):
    """FP8 Q.K^T (Q rounded to e4m3 per block) with P.V in fp16 (the default under bf16 q) and with
    P.V in fp8 too (F16_DOTS off: P rounded to e4m3): ~3 mantissa bits per rounded operand, so
    judged by SQNR and cosine; keeping P in fp16 loses less."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from _checks import sqnr_db
    from lpm_rt.ops._launch import override_tiles

    args = make_case(2, Lq, 2, 64, page_size, [45, 130], torch.bfloat16, torch.float8_e4m3fn)
    ref, _ = references(*args)
    bn = max(16, 1 << (page_size - 1).bit_length())
    tiles = dict(BLOCK_M=16, BLOCK_N=bn, PAGE_TILES=True, PEEL_LAST=True) if page_tiles else dict(BLOCK_M=16, BLOCK_N=16)
    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    outs = {}
    for f16 in (True, False):
        with override_tiles(_paged_attn_fwd_kernel, {**tiles, "F16_DOTS": f16}, 4, 2):
            outs[f16] = paged_attention(*args, fp8_q=True, num_splits=splits)
        assert launches[-1]["FP8_Q"] and launches[-1]["F16_DOTS"] is f16
        assert_sqnr(outs[f16], ref, min_db=25.0, min_cos=0.995)
    assert sqnr_db(outs[True], ref) > sqnr_db(outs[False], ref)


def test_sm_scale_and_page_order(triton_backend):
    """A custom sm_scale is honoured, and the table (not page ids) orders the tokens."""
    q, kp, vp, table, lens, _, _ = make_case(1, 4, 1, 16, 8, [20])
    out = paged_attention(q, kp, vp, table, lens, sm_scale=0.3)
    ref, low = references(q, kp, vp, table, lens, None, None, sm_scale=0.3)
    assert_calibrated(out, low, ref, floor=1e-5)
    swapped = table.flip(1).contiguous()                # same pages, other order -> other tokens valid
    out2 = paged_attention(q, kp, vp, swapped, lens, sm_scale=0.3)
    assert not torch.allclose(out, out2)


def test_launcher_really_launches_triton(triton_backend, monkeypatch):
    """The reference is made to raise and the kernel is spied on: a fallback cannot pass."""
    launches = spy_triton(monkeypatch, "paged_attention", "_paged_attn_fwd_kernel")
    args = make_case(1, 2, 1, 16, 8, [11])
    out = paged_attention(*args)
    assert launches == [(1, 1, 1)] and torch.isfinite(out).all()


def test_bad_inputs_raise(triton_backend):
    q, kp, vp, table, lens, _, _ = make_case(1, 2, 1, 16, 8, [11])
    with pytest.raises(ValueError, match="int32"):
        paged_attention(q, kp, vp, table.long(), lens)
    with pytest.raises(TypeError):
        paged_attention(q.half(), kp, vp, table, lens)
    with pytest.raises(ValueError, match="fp8_q"):
        paged_attention(q, kp, vp, table, lens, fp8_q=True)


def test_torch_compile_traces_custom_op(triton_backend):
    args = make_case(1, 3, 2, 16, 8, [10])
    fn = torch.compile(lambda *a: paged_attention(*a) * 2.0, backend="aot_eager", fullgraph=True)
    out = fn(*args)
    ops.set_backend("ref")
    ref, low = references(*args)
    assert_calibrated(out / 2.0, low, ref, floor=1e-5)


# ---------------------------------------------------------------- GPU, production shapes
LPM17 = preset("lpm-17b")


@pytest.mark.gpu
@pytest.mark.parametrize("chunk,heads,kv_dtype,fp8_q", [
    (1, 8, torch.bfloat16, False), (1, 8, torch.float8_e4m3fn, False), (6, 4, torch.float8_e4m3fn, True)])
def test_gpu_lpm17b_480p(gpu_triton, chunk, heads, kv_dtype, fp8_q):
    """lpm-17b at 480P (head_dim 128, pages of 120; a subset of the 40 heads keeps the fp32
    reference in memory): chunk of c frames over [3 refs | 12 history | chunk]."""
    s = LPM17.stream
    lq, kv = chunk * s.tokens_per_frame, (s.reference_slots + s.history_frames + chunk) * s.tokens_per_frame
    args = make_case(1, lq, heads, LPM17.model.head_dim, s.page_size, [kv], torch.bfloat16, kv_dtype,
                     device="cuda")
    out = paged_attention(*args, fp8_q=fp8_q)
    ref = paged_attention_ref(*args)                                         # fp32 upcast
    if fp8_q:
        assert_sqnr(out, ref, min_db=25.0, min_cos=0.995)
    else:
        assert_calibrated(out, paged_attention_ref(*args, upcast=False), ref, floor=1e-4)


@pytest.mark.gpu
def test_gpu_overlap_half_pages_lpm17b(gpu_triton):
    """OVERLAP as the sweep runs it: lpm-17b one-frame chunk over bf16 pages of 60 tokens in
    128x64 page tiles at 3 stages (the form whose SASS overlaps softmax and Q.K^T), and the same
    tiles in the plain order: both against the fp32 reference."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    s = LPM17.stream
    lq, kv = s.tokens_per_frame, (s.reference_slots + s.history_frames + 1) * s.tokens_per_frame
    args = make_case(1, lq, 4, LPM17.model.head_dim, s.page_size // 2, [kv], torch.bfloat16, device="cuda")
    ref = paged_attention_ref(*args)
    for overlap in (False, True):
        with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=128, BLOCK_N=64, PAGE_TILES=True, OVERLAP=overlap),
                            8, 3):
            out = paged_attention(*args)
        assert_calibrated(out, paged_attention_ref(*args, upcast=False), ref, floor=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True], ids=["launcher-tile", "overlap-half-pages"])
def test_gpu_mixed_pages_lpm17b(gpu_triton, half):
    """fp8 K beside bf16 V pages (FP8-Q by default) at lpm-17b, one frame: the launcher's tile on
    120-token pages, and OVERLAP in 128x64 tiles on 60-token pages (the sweep's forms)."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import override_tiles

    s = LPM17.stream
    lq, kv = s.tokens_per_frame, (s.reference_slots + s.history_frames + 1) * s.tokens_per_frame
    args = mixed_case(1, lq, 4, LPM17.model.head_dim, s.page_size // 2 if half else s.page_size, [kv],
                      device="cuda")
    ref = paged_attention_ref(*args)
    if half:
        with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=128, BLOCK_N=64, PAGE_TILES=True, OVERLAP=True), 8, 3):
            out = paged_attention(*args)
    else:
        out = paged_attention(*args)
    assert_sqnr(out, ref, min_db=25.0, min_cos=0.995)


@pytest.mark.gpu
def test_gpu_split_kv_small_lq(gpu_triton):
    args = make_case(2, 16, 40, 128, 120, [15 * 1560, 7 * 1560 + 33], torch.bfloat16, device="cuda")
    out = paged_attention(*args)                                             # heuristic picks split-KV
    ref = paged_attention_ref(*args)
    assert_calibrated(out, paged_attention_ref(*args, upcast=False), ref, floor=1e-4)


@pytest.mark.parametrize("B,Lq,H,D,page_size,kv_lens,dtype,kv_dtype,splits", CASES)
def test_traced_reference_form_matches(monkeypatch, B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype, splits):
    """Under ``torch.compile`` the reference takes its masked whole-table form (no host read of
    kv_lens): the same attention as the eager form, to fp32 rounding."""
    args = make_case(B, Lq, H, D, page_size, kv_lens, dtype, kv_dtype)
    eager = paged_attention_ref(*args)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = paged_attention_ref(*args)
    assert traced.dtype == eager.dtype and traced.shape == eager.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(traced.float(), eager.float(), rtol=tol, atol=tol)
