"""Kernel benchmarks: every op's providers side by side at production shapes.

    lpm-rt bench kernels [--op OP[,OP]] [--providers PATTERNS] [--quick] [--out FILE]      (``main``; also ``python -m ...``)

Providers: ``ref-eager`` (the pure-torch reference), ``ref-compiled`` (``torch.compile`` of it: the
bar to beat), ``triton`` variants, and vendor baselines (``scaled_dot_product_attention`` per
backend over the same K/V gathered contiguously, bf16 ``torch.matmul``, ``torch._scaled_mm``).
Timing: ``triton.testing.do_bench`` median and p20/p80 (warm-up excluded). Throughput from the
explicit ``*_flops`` / ``*_bytes`` helpers, as a fraction of peaks measured on the same device in
the same run. Results go to JSON (device, driver, versions, git SHA). Without a CUDA GPU there
is nothing meaningful to time: ``main`` says so, runs a tiny correctness smoke of the Triton
kernels through the interpreter, and returns 0.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from ..config import preset

OPS = ("paged_attention", "fp8_linear", "norm_modulate", "cache_write", "cross_attention")
TEXT_TOKENS = 512               # Wan2.1's text length: the longest key stream the text attention sees
SCORES_LIMIT = 8 << 30          # ref providers materialize [H, Lq, N] fp32 scores: skip beyond this
F8, BF16 = torch.float8_e4m3fn, torch.bfloat16


# ---------------------------------------------------------------- shapes and work
def production_shapes(op: str, quick: bool = False) -> list[dict]:
    """Labelled shapes of one denoising pass at 480P: chunks of c latent frames attend to
    [3 reference frames | 12-frame history | the chunk] through pages of 120 tokens."""
    out = []
    for name in ("edge-1.3b", "lpm-17b"):
        cfg = preset(name)
        m, s = cfg.model, cfg.stream
        tpf = s.tokens_per_frame                                           # 1560 at 480P
        for c in ((1, 6) if quick else (1, 3, 6)):
            lq, kv = c * tpf, (s.reference_slots + s.history_frames + c) * tpf
            base = dict(label=f"{name} 480P chunk={c}f", preset=name, B=1, M=lq)
            if op == "paged_attention":
                out.append(dict(base, Lq=lq, kv=kv, H=m.num_heads, D=m.head_dim, page_size=s.page_size))
            elif op == "fp8_linear":
                out += [dict(base, label=base["label"] + f" {nm}", K=k, N=n)
                        for nm, k, n in (("qkv", m.dim, 3 * m.dim), ("ffn-up", m.dim, m.ffn_dim),
                                         ("ffn-down", m.ffn_dim, m.dim))]
            elif op == "norm_modulate":
                out.append(dict(base, C=m.dim))
            elif op == "cache_write":
                out.append(dict(base, N=lq, H=m.num_heads, D=m.head_dim, page_size=s.page_size))
            elif op == "cross_attention":
                ka = (m.audio_context + 1) * m.audio_tokens_per_frame
                out += [dict(base, label=base["label"] + f" text Lk={TEXT_TOKENS}", Lq=lq, kv=TEXT_TOKENS,
                             H=m.num_heads, D=m.head_dim, k_norm=False),
                        dict(base, label=base["label"] + f" audio Lk={ka}", B=c, Lq=tpf, kv=ka,
                             H=m.num_heads, D=m.head_dim, k_norm=True)]
    if op == "paged_attention":                                            # decode-like: split-KV
        out.append(dict(label="lpm-17b Lq=16 over 15 frames", preset="lpm-17b", B=1, M=16, Lq=16,
                        kv=15 * 1560, H=40, D=128, page_size=120))
    return out


def attention_flops(sh) -> float:
    return 4.0 * sh["B"] * sh["H"] * sh["Lq"] * sh["kv"] * sh["D"]


def attention_bytes(sh, q_elt: int, kv_elt: float) -> float:
    return sh["B"] * sh["H"] * sh["D"] * (2 * sh["Lq"] * q_elt + 2 * sh["kv"] * kv_elt)


def mixed_pages(a8, a16):
    """Attention inputs with fp8 K pages (and scales) beside bf16 V pages: K from ``a8``, V from
    ``a16`` (both made by ``attention_inputs`` with one seed: one table)."""
    q, k8, _, table, lens, ks, _ = a8
    return (q, k8, a16[2], table, lens, ks, None)


def linear_flops(sh) -> float:
    return 2.0 * sh["M"] * sh["N"] * sh["K"]


def linear_bytes(sh, in_elt: int, out_elt: int = 2) -> float:
    return (sh["M"] * sh["K"] + sh["N"] * sh["K"]) * in_elt + sh["M"] * sh["N"] * out_elt


def norm_bytes(sh, out_elt: int = 2) -> float:
    return sh["M"] * sh["C"] * (2 + out_elt) + 4 * sh["C"] * 2


def cache_write_bytes(sh, page_elt: int) -> float:
    n = sh["N"] * sh["H"] * sh["D"]
    return 2 * n * (2 + page_elt) + n // 2 * 8


# ---------------------------------------------------------------- inputs
def attention_inputs(sh, kv_dtype, device="cuda", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    ps, H, D = sh["page_size"], sh["H"], sh["D"]
    n_pages = -(-sh["kv"] // ps)
    P = n_pages + 8
    q = torch.randn(sh["B"], sh["Lq"], H, D, generator=g).to(device, BF16)
    kf = torch.randn(P, ps, H, D, generator=g).to(device)
    vf = torch.randn(P, ps, H, D, generator=g).to(device)
    table = torch.randperm(P, generator=g)[:n_pages].view(1, -1).to(device, torch.int32)
    lens = torch.full((sh["B"],), sh["kv"], dtype=torch.int32, device=device)
    ks = vs = None
    if kv_dtype == F8:
        ks, vs = kf.abs().amax((1, 3)) / 448.0, vf.abs().amax((1, 3)) / 448.0
        kf, vf = kf / ks[:, None, :, None], vf / vs[:, None, :, None]
    return (q, kf.to(kv_dtype), vf.to(kv_dtype), table, lens, ks, vs)


# ---------------------------------------------------------------- timing and errors
def timed(fn, warmup_ms: float, rep_ms: float, cuda: bool = True, cpu_reps: int = 3, graph: bool = False) -> dict:
    """{median_ms, p20_ms, p80_ms} of ``fn``: on CUDA ``triton.testing.do_bench`` (CUDA events;
    warm-up and repetitions in milliseconds); elsewhere wall time of ``cpu_reps`` calls after one
    warm-up call (p20/p80: their min/max). ``graph``: the calls replayed from a CUDA graph
    (``do_bench_cudagraph``, after one eager warm-up call that compiles and autotunes): device
    time without the Python launch path, which bounds a small kernel's eager figure from below
    (the streaming step runs as a CUDA graph too)."""
    if graph:
        if not cuda:
            raise ValueError("graph timing needs a CUDA device")
        from triton.testing import do_bench_cudagraph

        fn()
        med, p20, p80 = do_bench_cudagraph(fn, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return dict(median_ms=med, p20_ms=p20, p80_ms=p80)
    if cuda:
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return dict(median_ms=med, p20_ms=p20, p80_ms=p80)
    fn()
    ts = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t0))
    return dict(median_ms=statistics.median(ts), p20_ms=min(ts), p80_ms=max(ts))


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _timed(fn, quick, graph=False):
    return timed(fn, 10 if quick else 25, 30 if quick else 100, graph=graph)


# ---------------------------------------------------------------- providers


def providers(op: str, sh: dict, device: str = "cuda"):
    """(name, precision, zero-arg callable or None when skipped) for one op and shape."""
    from .. import ops

    def triton_call(fn, *a, **k):
        def run():
            ops.set_backend("triton")
            return fn(*a, **k)
        run.inputs = (a, k)                   # what it is called with (tests read them)
        return run

    if op == "paged_attention":
        big = sh["H"] * sh["Lq"] * sh["kv"] * 4 > SCORES_LIMIT
        a16, a8 = attention_inputs(sh, BF16, device), attention_inputs(sh, F8, device)
        q, k, v, table, lens = a16[:5]
        from ..ops.paged_attention import gather_pages

        kc = gather_pages(k, None, table[0], sh["kv"], BF16).transpose(0, 1)[None]           # (1, H, kv, D)
        vc = gather_pages(v, None, table[0], sh["kv"], BF16).transpose(0, 1)[None]
        qc = q.transpose(1, 2)
        compiled = torch.compile(ops.paged_attention_ref)
        yield "ref-eager", "bf16", None if big else (lambda: ops.paged_attention_ref(*a16))
        yield "ref-compiled", "bf16", None if big else (lambda: compiled(*a16))
        yield "triton", "bf16", triton_call(ops.paged_attention, *a16)
        yield "triton-fp8kv", "fp8kv", triton_call(ops.paged_attention, *a8, fp8_q=False)
        yield "triton-fp8kv-bf16dots", "fp8kv", triton_call(_bf16_dots(ops.paged_attention, sh), *a8, fp8_q=False)
        yield "triton-fp8", "fp8qk", triton_call(ops.paged_attention, *a8, fp8_q=True)   # fp16 P.V
        # fp8 K pages beside bf16 V pages: fp8 Q.K^T on the K codes as stored, bf16 P.V
        yield "triton-fp8k", "fp8k", triton_call(ops.paged_attention, *mixed_pages(a8, a16), fp8_q=True)
        # the OVERLAP order on pages of half the size (see _overlap); the same tokens
        half = half_pages(sh)
        h16 = None if half is None else attention_inputs(half, BF16, device)
        yield "triton-overlap", "bf16", None if half is None else triton_call(
            _overlap(ops.paged_attention, device), *h16[:5])
        yield "triton-fp8k-overlap", "fp8k", None if half is None else triton_call(
            _overlap(ops.paged_attention, device), *mixed_pages(attention_inputs(half, F8, device), h16), fp8_q=True)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            def sdpa(be=be):
                with sdpa_kernel([be]):
                    return torch.nn.functional.scaled_dot_product_attention(qc, kc, vc)
            yield f"sdpa-{be.name.lower()}", "bf16", sdpa
        # the vendor route for the paged layout: gather (and dequantize) the pages into contiguous
        # K/V every call, then cuDNN's attention -- what using it for the dense part would cost
        yield "sdpa-gathered-cudnn", "bf16", lambda: _gathered_sdpa(*a16, sh["kv"])
        yield "sdpa-gathered-cudnn-fp8kv", "fp8kv", lambda: _gathered_sdpa(*a8, sh["kv"])
    elif op == "fp8_linear":
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(sh["M"], sh["K"], generator=g).to(device, BF16)
        w = (torch.randn(sh["N"], sh["K"], generator=g) * sh["K"] ** -0.5).to(device, BF16)
        x8, xs = ops.quantize_fp8_rows(x)
        w8, ws = ops.quantize_fp8_weight(w)
        wb8, wbs = ops.quantize_fp8_weight(w, 128)
        big = sh["M"] * sh["N"] * 4 * 3 > SCORES_LIMIT
        compiled = torch.compile(ops.fp8_linear_ref)
        yield "ref-eager", "fp8", None if big else (lambda: ops.fp8_linear_ref(x8, xs, w8, ws))
        yield "ref-compiled", "fp8", None if big else (lambda: compiled(x8, xs, w8, ws))
        yield "triton", "fp8", triton_call(ops.fp8_linear, x8, xs, w8, ws)
        yield "triton-block128", "fp8", triton_call(ops.fp8_linear, x8, xs, wb8, wbs)
        # bf16 activations: torch's quantization + the e4m3 GEMM; the launcher's choice (its row-
        # quantization kernel first, or inside the GEMM for N <= QUANT_SPLIT_N); inside, forced
        yield "quantize+triton", "fp8-bf16in", triton_call(lambda: ops.fp8_linear(*ops.quantize_fp8_rows(x), w8, ws))
        yield "triton-bf16-input", "fp8-bf16in", triton_call(ops.fp8_linear, x, None, w8, ws)
        yield "triton-quant-in-gemm", "fp8-bf16in", triton_call(_in_gemm(ops.fp8_linear), x, None, w8, ws)
        yield "torch-matmul-bf16", "bf16", lambda: x @ w.T
        xs2, ws2, w8t = xs[:, None].contiguous(), ws[None, :].contiguous(), w8.T
        yield "scaled_mm", "fp8", lambda: torch._scaled_mm(x8, w8t, scale_a=xs2, scale_b=ws2, out_dtype=BF16)
        # the vendor GEMM with the accumulation trade the h100 tiles make (FAST_ACCUM)
        yield "scaled_mm-fast-accum", "fp8", lambda: torch._scaled_mm(x8, w8t, scale_a=xs2, scale_b=ws2,
                                                                      out_dtype=BF16, use_fast_accum=True)
    elif op == "norm_modulate":
        x = torch.randn(1, sh["M"], sh["C"], device=device, dtype=BF16)
        e = torch.randn(1, 1, 6, sh["C"], device=device, dtype=BF16)
        shift, scale = (t.squeeze(2) for t in e.chunk(6, dim=2)[:2])
        compiled = torch.compile(ops.norm_modulate_ref)
        yield "ref-eager", "bf16", lambda: ops.norm_modulate_ref(x, shift, scale)
        yield "ref-compiled", "bf16", lambda: compiled(x, shift, scale)
        yield "triton", "bf16", triton_call(ops.norm_modulate, x, shift, scale)
        yield "triton-fp8out", "fp8", triton_call(ops.norm_modulate, x, shift, scale, out_fp8=True)
    elif op == "cache_write":
        N, H, D, ps = sh["N"], sh["H"], sh["D"], sh["page_size"]
        k = torch.randn(N, H, D, device=device, dtype=BF16)
        v = torch.randn_like(k)
        P = N // ps + 4
        kp, vp = (torch.empty(P, ps, H, D, device=device, dtype=F8) for _ in range(2))
        ks, vs = (torch.empty(P, H, device=device) for _ in range(2))
        slots = (torch.randperm(P)[: N // ps, None] * ps + torch.arange(ps)).flatten().to(device)
        ang = torch.rand(N, D // 2, device=device) * 6.28
        cos, sin = ang.cos(), ang.sin()
        args = (k, v, kp, vp, slots, ks, vs, cos, sin)
        compiled = torch.compile(ops.cache_write_ref)
        yield "ref-eager", "fp8", lambda: ops.cache_write_ref(*args)
        yield "ref-compiled", "fp8", lambda: compiled(*args)
        yield "triton", "fp8", triton_call(ops.cache_write, *args)
    elif op == "cross_attention":
        from ..ops.cross_attention import ABSORB_MAX_KEYS

        g = torch.Generator(device="cpu").manual_seed(0)
        B, Lq, Lk, H, D = sh["B"], sh["Lq"], sh["kv"], sh["H"], sh["D"]
        q = torch.randn(B, Lq, H, D, generator=g).to(device, BF16)
        kv = torch.randn(B, Lk, 2, H, D, generator=g).to(device, BF16)             # a fused k|v GEMM output
        k, v = kv[:, :, 0], kv[:, :, 1]
        qw, kw = (torch.ones(H * D, device=device, dtype=BF16) for _ in range(2))
        kw = kw if sh["k_norm"] else None
        compiled = torch.compile(ops.cross_attention_ref)
        yield "ref-eager", "bf16", lambda: ops.cross_attention_ref(q, k, v, qw, kw)
        yield "ref-compiled", "bf16", lambda: compiled(q, k, v, qw, kw)
        yield "triton", "bf16", triton_call(ops.cross_attention, q, k, v, qw, kw)
        qc, kc, vc = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)       # norms excluded:
        yield "sdpa-alone", "bf16", lambda: torch.nn.functional.scaled_dot_product_attention(qc, kc, vc)
        # with the output projection and the residual (the fp8 block form; timed whole, the TFLOP/s
        # column still counts the attention's FLOPs only): the attention then the e4m3 o GEMM, or
        # the projection absorbed into the values (vo made once per stream, outside the timing)
        C = H * D
        wo = torch.randn(C, C, generator=g).div_(C ** 0.5).to(device)
        w8, ws = ops.quantize_fp8_weight(wo)
        bias = torch.randn(C, generator=g).to(device, BF16)
        res = torch.randn(B, Lq, C, generator=g).to(device, BF16)
        vo = torch.einsum("bjhd,chd->bjhc", v.float(), wo.view(C, H, D)).to(BF16)
        yield "triton+o-gemm", "bf16", triton_call(
            lambda: ops.fp8_linear(ops.cross_attention(q, k, v, qw, kw).flatten(2), None, w8, ws, bias, residual=res))
        absorbable = Lk <= ABSORB_MAX_KEYS                        # every key in one tile
        yield "triton-absorbed", "bf16", triton_call(ops.cross_attention_out, q, k, vo, qw, kw, 1e-6, bias,
                                                     residual=res) if absorbable else None


def work(op, sh, precision) -> tuple[float, float]:
    """(flops, bytes) of one call."""
    if op == "paged_attention":
        kv_elt = 1.5 if precision == "fp8k" else 1 if precision.startswith("fp8") else 2
        return attention_flops(sh), attention_bytes(sh, 2, kv_elt)
    if op == "fp8_linear":
        if precision == "fp8-bf16in":
            return linear_flops(sh), linear_bytes(sh, 1) + sh["M"] * sh["K"] * 1   # x read as bf16
        return linear_flops(sh), linear_bytes(sh, 1 if precision == "fp8" else 2)
    if op == "cross_attention":
        return attention_flops(sh), attention_bytes(sh, 2, 2)
    if op == "norm_modulate":
        return 0.0, norm_bytes(sh, 1 if precision == "fp8" else 2)
    return 0.0, cache_write_bytes(sh, 1)


def _peak_for(precision: str, peaks: dict):
    """The measured peak a row's TFLOP/s is a fraction of: fp8 MMAs, bf16 MMAs (fp8kv: pages
    widened for bf16/fp16 dots), or the mix of fp8k (fp8 K, bf16 V pages) and fp8qk (fp8 pages,
    fp16 P.V) -- half the flops (Q.K^T) on fp8, half (P.V) on 16-bit, so the time-weighted peak
    2 / (1 / fp8 + 1 / bf16)."""
    if precision in ("fp8k", "fp8qk"):
        f8, b16 = peaks.get("fp8_tflops"), peaks.get("bf16_tflops")
        return 2.0 / (1.0 / f8 + 1.0 / b16) if f8 and b16 else None
    return peaks.get("fp8_tflops" if precision.startswith("fp8") and precision != "fp8kv" else "bf16_tflops")


# ---------------------------------------------------------------- device and environment
def measure_peaks(quick: bool = False) -> dict:
    """Peaks measured here, now: bf16 and fp8 dense GEMM at 8192^3, device-to-device copy."""
    from triton.testing import do_bench

    n = 4096 if quick else 8192
    a = torch.randn(n, n, device="cuda", dtype=BF16)
    b = torch.randn(n, n, device="cuda", dtype=BF16)
    peaks = {"bf16_tflops": 2 * n ** 3 / do_bench(lambda: a @ b) * 1e-9}
    try:
        a8, b8 = a.to(F8), b.to(F8).T.contiguous().T
        one = torch.ones((), device="cuda")
        peaks["fp8_tflops"] = 2 * n ** 3 / do_bench(
            lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=BF16)) * 1e-9
    except (RuntimeError, TypeError) as e:                                # pre-sm_89 or old torch
        peaks["fp8_tflops"], peaks["fp8_error"] = None, str(e)[:200]
    src = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    peaks["copy_gbps"] = 2 * src.numel() * 4 / do_bench(lambda: dst.copy_(src)) * 1e-6
    return peaks


def env_info() -> dict:
    import triton

    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    from . import git_state

    info = dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda, **git_state(),
                time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sm=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gb=round(p.total_memory / 2 ** 30, 1),
                    driver=sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    return info


def run_op(op: str, quick: bool, peaks: dict, shapes=None, device: str = "cuda", only=None,
           graph: bool = False) -> list[dict]:
    """``only``: provider-name patterns (fnmatch) to run, None for all; ``graph``: time CUDA-graph
    replays (:func:`timed`)."""
    from .. import ops

    prev = ops.get_backend()
    try:
        return _run_op(op, quick, peaks, shapes, device, only, graph)
    finally:
        ops.set_backend(prev)                    # triton providers select the backend per call


def _run_op(op, quick, peaks, shapes, device, only, graph=False) -> list[dict]:
    rows = []
    for sh in shapes if shapes is not None else production_shapes(op, quick):
        for name, precision, fn in providers(op, sh, device):
            if only is not None and not any(fnmatch.fnmatchcase(name, p) for p in only):
                continue
            row = dict(op=op, shape=sh["label"], provider=name, precision=precision,
                       **{k: v for k, v in sh.items() if k not in ("label", "preset")})
            if fn is None:
                rows.append(dict(row, skipped=f"reference would materialize > {SCORES_LIMIT >> 30} GiB"))
                continue
            try:
                t = _timed(fn, quick, graph)
            except Exception as e:                                         # noqa: BLE001 -- a baseline may be unsupported
                rows.append(dict(row, skipped=f"{type(e).__name__}: {str(e)[:160]}"))
                continue
            tile = autotuned_tile(op, name)
            if tile is not None:
                row["autotuned"] = tile
            flops, nbytes = work(op, sh, precision)
            sec = t["median_ms"] * 1e-3
            row.update(t, tflops=flops / sec * 1e-12 if flops else None, gbps=nbytes / sec * 1e-9)
            peak = _peak_for(precision, peaks)
            row["frac_peak"] = (row["tflops"] / peak if flops and peak
                                else row["gbps"] / peaks["copy_gbps"] if not flops else None)
            rows.append(row)
            print(f"{op:16s} {sh['label']:34s} {name:20s} {t['median_ms']:9.3f} ms "
                  f"[{t['p20_ms']:.3f}, {t['p80_ms']:.3f}]  "
                  + (f"{row['tflops']:7.1f} TFLOP/s" if flops else f"{row['gbps']:7.1f} GB/s")
                  + (f"  {100 * row['frac_peak']:5.1f}% of measured peak" if row["frac_peak"] else ""), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def autotuned_tile(op: str, provider: str) -> dict | None:
    """The tile the JIT GEMM's autotuner chose for the call just timed (what a frozen table
    should hold for that shape), or None (not an autotuned launch, or not on a GPU)."""
    if op != "fp8_linear" or not provider.startswith("triton") or not torch.cuda.is_available():
        return None
    from csrc_triton import fp8_linear as kern

    best = getattr(kern.autotuned_fp8_linear(), "best_config", None)
    if best is None:
        return None
    return dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)


# ---------------------------------------------------------------- CPU smoke
def cpu_smoke(op_filter=None) -> list[str]:
    """Tiny correctness check of each Triton kernel (those named in ``op_filter``, a list, or all)
    through the interpreter (not a speed figure).
    TRITON_INTERPRET is read when triton is imported, so unless this process set it first the
    smoke runs in a child process that does."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        code = ("import sys; from lpm_rt.benchmark.kernels import cpu_smoke; "
                f"print(chr(10).join(cpu_smoke({op_filter!r})))")
        proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRITON_INTERPRET="1"),
                              capture_output=True, text=True, timeout=600)
        if proc.returncode:
            return [f"smoke failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"]
        return proc.stdout.strip().splitlines()
    from .. import ops

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 2, 16, generator=g)
    kp, vp = torch.randn(4, 8, 2, 16, generator=g), torch.randn(4, 8, 2, 16, generator=g)
    table, lens = torch.tensor([[2, 0, 3]], dtype=torch.int32), torch.tensor([19], dtype=torch.int32)
    x = torch.randn(1, 5, 32, generator=g)
    sft, scl = torch.randn(1, 1, 32, generator=g), torch.randn(1, 1, 32, generator=g)
    x8, xs = ops.quantize_fp8_rows(x)
    w8, ws = ops.quantize_fp8_weight(torch.randn(24, 32, generator=g))
    cases = {
        "paged_attention": lambda: ops.paged_attention(q, kp, vp, table, lens),
        "norm_modulate": lambda: ops.norm_modulate(x, sft, scl),
        "fp8_linear": lambda: ops.fp8_linear(x8, xs, w8, ws, out_dtype=torch.float32),
        "cross_attention": lambda: ops.cross_attention(q, kp[:1], vp[:1], torch.ones(32), torch.ones(32)),
    }
    lines, prev = [], ops.get_backend()
    try:
        for name, fn in cases.items():
            if op_filter and name not in op_filter:
                continue
            ops.set_backend("ref")
            want = fn()
            ops.set_backend("triton")
            got = fn()
            err = (got.double() - want.double()).abs().max().item()
            lines.append(f"{name:16s} triton (interpreter) vs ref: max abs err {err:.2e} "
                         f"{'ok' if err < 1e-3 else 'MISMATCH'}")
    finally:
        ops.set_backend(prev)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lpm-rt bench kernels", description="Benchmark the kernels "
                                 "against the torch reference (eager, compiled) and vendor baselines.")
    ap.add_argument("--op", default=None, help=f"comma-separated ops to benchmark (default: all of {', '.join(OPS)})")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--providers", default=None, metavar="PATTERNS",
                    help="comma-separated provider names or fnmatch patterns to run (default: all), "
                         "e.g. 'triton*,sdpa-*'")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="time each provider's calls replayed from a CUDA graph: device time without the "
                         "Python launch path, which otherwise dominates small shapes (a provider that "
                         "cannot be captured is reported as skipped)")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/kernels-<gpu>-<time>.json)")
    args = ap.parse_args(argv)
    sel = [o.strip() for o in args.op.split(",")] if args.op else list(OPS)
    bad = [o for o in sel if o not in OPS]
    if bad:
        ap.error(f"unknown op(s) {', '.join(bad)}; known: {', '.join(OPS)}")
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        print("triton is not installed (pip install 'lpm-rt[bench]'): nothing to benchmark.")
        return 0
    if not torch.cuda.is_available():
        print("No CUDA GPU: kernel speed needs one, so no timings are taken here. Running a tiny "
              "correctness smoke of the Triton kernels through the interpreter instead:")
        lines = cpu_smoke(sel if args.op else None)
        for line in lines:
            print("  " + line)
        return 1 if any("MISMATCH" in ln or "failed" in ln for ln in lines) else 0
    info = env_info()
    peaks = measure_peaks(args.quick)
    print(f"{info['gpu']} (driver {info.get('driver')}), torch {info['torch']}, triton {info['triton']}; "
          f"measured peaks: {', '.join(f'{k}={v:.0f}' for k, v in peaks.items() if isinstance(v, float))}")
    only = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    timing = "cuda-graph replays (do_bench_cudagraph)" if args.cuda_graph else "CUDA events (do_bench)"
    print(f"timing: {timing}, medians")
    rows = [r for op in sel for r in run_op(op, args.quick, peaks, only=only, graph=args.cuda_graph)]
    out = args.out or os.path.join("bench", "results", "kernels-{}-{}.json".format(
        info["gpu"].replace(" ", "_"), datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(env=info, peaks=peaks, quick=args.quick, timing=timing, results=rows), f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _in_gemm(fn):
    """fn with every bf16-input GEMM quantizing inside the kernel (QUANT_X), whatever its N."""
    import importlib

    fl = importlib.import_module("lpm_rt.ops.fp8_linear")             # the module, not the op

    def run(*a, **k):
        prev, fl.QUANT_SPLIT_N = fl.QUANT_SPLIT_N, 1 << 62
        try:
            return fn(*a, **k)
        finally:
            fl.QUANT_SPLIT_N = prev
    return run


def _bf16_dots(fn, sh):
    """fn with fp8-page attention on bf16 dots (F16_DOTS off, the form before it), the launcher's tile."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel

    from ..ops._launch import override_tiles
    from ..ops.paged_attention import _config

    def run(*a, **k):
        bm, bn, warps, stages, pt = _config(sh["Lq"], sh["D"], sh["page_size"], a[0].device)
        with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=bm, BLOCK_N=bn, PAGE_TILES=pt, F16_DOTS=False),
                            warps, stages):
            return fn(*a, **k)
    return run


def half_pages(sh: dict) -> dict | None:
    """The attention shape with pages of half the size, where they fit a 64-key page tile."""
    ps = sh["page_size"]
    return dict(sh, page_size=ps // 2) if ps % 2 == 0 and ps // 2 <= 64 else None


def _overlap(fn, device):
    """fn with paged attention in the OVERLAP order (block j + 1's Q.K^T in flight during block j's
    softmax) on 64-key page tiles, 128 rows, 8 warps, 3 stages: the form whose sm_90a SASS overlaps
    (csrc_triton/paged_attention.py). Off the GPU, small tiles for the interpreter."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel

    from ..ops._launch import override_tiles

    tiles, warps, stages = ((dict(BLOCK_M=128, BLOCK_N=64), 8, 3) if device == "cuda"
                            else (dict(BLOCK_M=16, BLOCK_N=16), 4, 2))

    def run(*a, **k):
        with override_tiles(_paged_attn_fwd_kernel, dict(tiles, PAGE_TILES=True, OVERLAP=True), warps, stages):
            return fn(*a, **k)
    return run


def _gathered_sdpa(q, k_pages, v_pages, table, lens, k_scale, v_scale, n: int):
    """Batch-1 paged attention the vendor way: the first n tokens of the table's pages gathered
    (fp8 pages dequantized) into contiguous bf16 K/V, then cuDNN's SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..ops.paged_attention import gather_pages

    k = gather_pages(k_pages, k_scale, table[0], n, BF16).transpose(0, 1)[None]     # (1, H, n, D)
    v = gather_pages(v_pages, v_scale, table[0], n, BF16).transpose(0, 1)[None]
    backends = [SDPBackend.CUDNN_ATTENTION] if q.is_cuda else [SDPBackend.MATH]
    with sdpa_kernel(backends):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k, v).transpose(1, 2)


def provider_names(op: str) -> list[str]:
    return {"paged_attention": ["ref-eager", "ref-compiled", "triton", "triton-fp8kv", "triton-fp8kv-bf16dots",
                                "triton-fp8", "triton-fp8k", "triton-overlap", "triton-fp8k-overlap",
                                "sdpa-flash_attention", "sdpa-cudnn_attention",
                                "sdpa-efficient_attention", "sdpa-gathered-cudnn", "sdpa-gathered-cudnn-fp8kv"],
            "fp8_linear": ["ref-eager", "ref-compiled", "triton", "triton-block128", "quantize+triton",
                           "triton-bf16-input", "triton-quant-in-gemm", "torch-matmul-bf16", "scaled_mm",
                           "scaled_mm-fast-accum"],
            "norm_modulate": ["ref-eager", "ref-compiled", "triton", "triton-fp8out"],
            "cache_write": ["ref-eager", "ref-compiled", "triton"],
            "cross_attention": ["ref-eager", "ref-compiled", "triton", "sdpa-alone", "triton+o-gemm",
                                "triton-absorbed"]}[op]


def pytest_benchmark_run(benchmark, op: str, shape: dict, provider: str) -> None:
    """Time one (op, shape, provider) with pytest-benchmark (bench/kernels/bench_<op>.py)."""
    import pytest

    found = [(p, fn) for name, p, fn in providers(op, shape) if name == provider]
    if not found or found[0][1] is None:
        pytest.skip(f"{provider} not run at {shape['label']} (reference too large or not offered)")
    precision, fn = found[0]

    def call():
        fn()
        torch.cuda.synchronize()

    try:
        call()
    except Exception as e:                                                  # noqa: BLE001 -- unsupported baseline
        pytest.skip(f"{provider}: {type(e).__name__}: {str(e)[:120]}")
    benchmark.pedantic(call, warmup_rounds=3, rounds=20, iterations=1)
    flops, nbytes = work(op, shape, precision)
    sec = benchmark.stats.stats.median
    benchmark.extra_info.update(shape=shape["label"], provider=provider, precision=precision,
                                tflops=flops / sec * 1e-12 if flops else None, gbps=nbytes / sec * 1e-9)


def lpm_ops():
    from .. import ops

    return ops
