"""Sweep the tiles of the two kernels that carry the load -- paged attention and the FP8 GEMM --
at production shapes, each variant checked against the fp32 reference (attention: on two of the
heads; bound rel. L2 1e-2 for 16-bit dots, 0.056 = SQNR 25 dB for fp8 dots) and timed; the
fastest correct variant per (op, mode, shape) is what the frozen tables in ``compile/targets.py``
should hold (record device and date there).

    python scripts/tune_kernels.py --out tune.json                 # CUDA: ~2.5 minutes (estimated)
    python scripts/tune_kernels.py --op paged_attention --modes bf16,fp8k,fp8kv,fp8qk --half-pages  # open forms
    TRITON_INTERPRET=1 python scripts/tune_kernels.py --smoke      # CPU: tiny shapes, two variants each

Variants are launched through the ops' own launchers with ``lpm_rt.ops._launch.override_tiles``
(so the grid, split-KV and argument handling are the production ones). A variant that does not
compile (shared memory) or does not match is reported, never timed. Timing: ``do_bench`` median.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

ATTN_TILES = [(128, 128, 8, 2, True, False, False, False), (128, 128, 8, 2, True, False, False, True),
              (128, 128, 8, 3, True, False, False, False), (64, 128, 4, 3, True, False, False, False)]
# (BLOCK_M, BLOCK_N, warps, stages, PAGE_TILES: one page per key block, needs BLOCK_N >= the page;
# TMA_KV: those page tiles through tensor descriptors; OVERLAP: block j + 1's Q.K^T in flight during
# block j's softmax; PEEL_LAST: the range's last page before a loop over whole pages, the
# launcher's pick for page tiles). Key blocks crossing pages (128x64), TMA_KV page tiles and
# 64x64 tiles lost at every shape of the sweeps in bench/results/gpu-20261204-2/tune.json and
# gpu-20261204-3/tune.json (the smoke run still covers TMA_KV).
HALF_PAGE_TILES = [(128, 64, 8, 3, True, False, False, False), (128, 64, 8, 3, True, False, True, False),
                   (128, 64, 8, 4, True, False, True, False)]
# bf16 (and fp8k) pages of half the production size (lpm-17b: 60 tokens) in 64-key page tiles, with
# and without OVERLAP: the forms whose SASS overlaps (128x128 tiles spill with it; fp8 pages and FP8-Q
# serialize their dots whatever the order, as their K or V tile is rewritten to shared memory every
# block).
MODES = ("bf16", "fp8kv", "fp8kv-bf16", "fp8", "fp8-vtok", "fp8k", "fp8qk")
DEFAULT_MODES = ("bf16", "fp8kv")
HALF_PAGE_MODES = ("bf16", "fp8k")
# bf16: bf16 pages; fp8kv: fp8 pages, fp16 dots (F16_DOTS, the default); fp8kv-bf16: fp8 pages, bf16
# dots (the form before F16_DOTS); fp8: FP8 Q.K^T and P.V (fp8_q); fp8-vtok: fp8_q over
# token-contiguous V pages. The last three lost to fp8kv in gpu-20261204-3/tune.json: --modes to rerun.
# fp8k: fp8 K pages beside bf16 V pages, fp8 Q.K^T (fp8_q) and bf16 P.V; fp8qk: fp8 pages, fp8 Q.K^T
# and fp16 P.V (F16_DOTS with fp8_q). Both untimed so far.
MODE_TILES = {"fp8kv-bf16": [(128, 128, 8, 2, True, False, False, False)],
              "fp8": [(128, 128, 8, 3, True, False, False, False), (128, 128, 8, 2, True, False, False, True)],
              "fp8-vtok": [(64, 128, 4, 3, True, False, False, False)]}
SMOKE_TILES = [(16, 16, 4, 2, False, False, False, False), (32, 16, 4, 2, True, False, False, False),
               (32, 16, 4, 2, True, True, False, False), (32, 16, 4, 2, True, False, True, False),
               (32, 16, 4, 2, True, False, False, True)]
LIN_TILES = [(128, 128, 8, 3), (128, 128, 8, 4), (128, 256, 8, 3)]
# (BLOCK_M, BLOCK_N, warps, stages), each with pointer or TMA loads and promoted or fast accumulation
# (64-row tiles lost at every shape of the first sweep)


def timer(cuda: bool, quick: bool):
    """fn -> median ms (CUDA: do_bench; CPU: one call after a warm-up, a smoke figure only)."""
    from lpm_rt.benchmark.kernels import timed

    return lambda fn: timed(fn, 10 if quick else 25, 30 if quick else 100, cuda, cpu_reps=1)["median_ms"]


def attention_cases(smoke: bool):
    from lpm_rt.benchmark.kernels import production_shapes
    if smoke:
        return [dict(label="tiny", B=1, Lq=24, kv=70, H=2, D=16, page_size=8)]
    return [s for s in production_shapes("paged_attention") if s["label"] in
            ("lpm-17b 480P chunk=6f", "lpm-17b 480P chunk=1f")]


def linear_cases(smoke: bool):
    from lpm_rt.benchmark.kernels import production_shapes
    if smoke:
        return [dict(label="tiny", M=40, K=256, N=48)]
    return [s for s in production_shapes("fp8_linear") if s["label"] in
            ("lpm-17b 480P chunk=6f ffn-up", "lpm-17b 480P chunk=6f qkv", "edge-1.3b 480P chunk=6f ffn-up")]


def tune_attention(dev, bench, smoke, emit, modes=DEFAULT_MODES, half_pages_only=False):
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt import ops
    from lpm_rt.benchmark.kernels import attention_inputs, half_pages, mixed_pages, rel_l2
    from lpm_rt.ops._launch import override_tiles

    runs = []                                  # (shape, mode, tiles)
    for sh in attention_cases(smoke):
        for mode in modes:
            if half_pages_only:                # the production tile (last page peeled and not), for the
                runs.append((sh, mode, ATTN_TILES[:2]))      # same-run comparison
            else:
                runs.append((sh, mode, SMOKE_TILES if smoke else MODE_TILES.get(mode, ATTN_TILES)))
        half = half_pages(sh)
        if half is not None:
            half["label"] = f"{sh['label']} page={half['page_size']}"
            for mode in (m for m in HALF_PAGE_MODES if m in modes):
                runs.append((half, mode, SMOKE_TILES[1::2] if smoke else HALF_PAGE_TILES))
    for sh, mode, tiles in runs:
        args = attention_inputs(sh, torch.bfloat16 if mode == "bf16" else torch.float8_e4m3fn, dev)[:7]
        if mode == "bf16":
            args = args[:5] + (None, None)
        if mode == "fp8k":
            args = mixed_pages(args, attention_inputs(sh, torch.bfloat16, dev))
        if mode == "fp8-vtok":
            # V pages stored token-contiguous ([P, H, D, page], passed as the [P, page, H, D]
            # view the op takes): e4m3 wgmma wants P.V's B operand K-major, which the standard
            # layout makes the kernel transpose through shared memory every block. A layout
            # the cache does not use yet: this measures whether changing it would pay.
            v = args[2]
            args = args[:2] + (v.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),) + args[3:]
        kw = dict(fp8_q=mode in ("fp8", "fp8-vtok", "fp8k", "fp8qk"), num_splits=1)
        f16 = mode in ("fp8kv", "fp8qk")
        # the fp32 reference on two heads (all 40 would materialize ~50 GB of scores)
        nh = min(2, sh["H"])
        q, kp, vp, table, lens, ks, vs = args
        sub = (q[:, :, :nh].contiguous(), kp[:, :, :nh].contiguous(), vp[:, :, :nh].contiguous(), table, lens,
               None if ks is None else ks[:, :nh].contiguous(), None if vs is None else vs[:, :nh].contiguous())
        ops.set_backend("ref")
        ref = ops.paged_attention_ref(*sub).float()
        ops.set_backend("triton")
        # 16-bit dots (bf16 pages, and fp8 pages widened): bf16 P's rounding; fp8 dots: SQNR >= 25 dB
        bound = 0.056 if mode in ("fp8", "fp8-vtok", "fp8k", "fp8qk") else 1e-2
        for bm, bn, w, st, pt, tma, ovl, peel in tiles:
            if (pt and bn < sh["page_size"]) or (mode == "fp8-vtok" and (not pt or tma)):
                continue                 # token-contiguous V: page tiles, pointer loads
            row = dict(op="paged_attention", mode=mode, shape=sh["label"], BLOCK_M=bm, BLOCK_N=bn,
                       num_warps=w, num_stages=st, PAGE_TILES=pt, TMA_KV=tma, F16_DOTS=f16, OVERLAP=ovl,
                       PEEL_LAST=peel, page_size=sh["page_size"])
            try:
                with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_M=bm, BLOCK_N=bn, SPLIT=False, PAGE_TILES=pt,
                                                                 V_TRANS_LOAD=mode == "fp8-vtok", TMA_KV=tma,
                                                                 F16_DOTS=f16, OVERLAP=ovl, PEEL_LAST=peel), w, st):
                    fn = lambda: ops.paged_attention(*args, **kw)          # noqa: E731
                    out = fn()
                    row["rel_l2_vs_fp32"] = rel_l2(out[:, :, :nh], ref)
                    if not row["rel_l2_vs_fp32"] < bound:
                        row["error"] = "mismatch"
                    else:
                        ms = bench(fn)
                        flops = 4.0 * sh["B"] * sh["H"] * sh["Lq"] * sh["kv"] * sh["D"]
                        row.update(median_ms=ms, tflops=flops / ms * 1e-9)
            except Exception as e:                       # noqa: BLE001 -- report, go on
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            emit(row)


def tune_linear(dev, bench, smoke, emit):
    from csrc_triton.fp8_linear import _fp8_linear_kernel
    from lpm_rt import ops
    from lpm_rt.benchmark.kernels import rel_l2
    from lpm_rt.ops._launch import override_tiles

    tiles = [(16, 16, 4, 2), (32, 32, 4, 2)] if smoke else LIN_TILES
    for sh in linear_cases(smoke):
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(sh["M"], sh["K"], generator=g).to(dev, torch.bfloat16)
        w = (torch.randn(sh["N"], sh["K"], generator=g) * sh["K"] ** -0.5).to(dev, torch.bfloat16)
        x8, xs = ops.quantize_fp8_rows(x)
        w8, ws = ops.quantize_fp8_weight(w)
        ref = (x8.float() * xs.float()[:, None]) @ (w8.float() * ws.float()[:, None]).T   # fp32, same codes
        ops.set_backend("triton")
        for (bm, bn, wp, st), fast, tma in itertools.product(tiles, (False, True), (False, True)):
            row = dict(op="fp8_linear", mode="fast_accum" if fast else "promote128", shape=sh["label"],
                       BLOCK_M=bm, BLOCK_N=bn, num_warps=wp, num_stages=st, TMA=tma)
            try:
                t = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, GROUP_M=8, FAST_ACCUM=fast, TMA=tma)
                with override_tiles(_fp8_linear_kernel, t, wp, st):
                    fn = lambda: ops.fp8_linear(x8, xs, w8, ws)                  # noqa: E731
                    out = fn()
                    row["rel_l2_vs_fp32"] = rel_l2(out, ref)
                    if not row["rel_l2_vs_fp32"] < 1e-2:                         # bf16 output: ~3e-3
                        row["error"] = "mismatch"
                    else:
                        ms = bench(fn)
                        row.update(median_ms=ms, tflops=2.0 * sh["M"] * sh["N"] * sh["K"] / ms * 1e-9)
            except Exception as e:                           # noqa: BLE001 -- report, go on
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            emit(row)


def best_rows(rows) -> list[dict]:
    """The fastest correct variant of each (op, mode, shape)."""
    best: dict = {}
    for r in rows:
        if "median_ms" in r:
            k = (r["op"], r["mode"], r["shape"])
            if k not in best or r["median_ms"] < best[k]["median_ms"]:
                best[k] = r
    return list(best.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", choices=("paged_attention", "fp8_linear"), default=None, help="one op (default both)")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES),
                    help=f"attention modes, comma-separated, of {','.join(MODES)} (default %(default)s)")
    ap.add_argument("--half-pages", action="store_true",
                    help="attention: only the half-size page runs (OVERLAP and not) and the production tile's rows "
                         "per shape and mode (with and without the last page peeled)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and two variants (CPU, interpreter)")
    ap.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    ap.add_argument("--out", default=None, help="JSON results (rows written as they finish)")
    args = ap.parse_args(argv)
    unknown = set(args.modes.split(",")) - set(MODES) - {""}
    if unknown:
        ap.error(f"--modes: unknown {sorted(unknown)} (known: {', '.join(MODES)})")
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA GPU: timings need one (use --smoke for the CPU check of the sweep itself)", file=sys.stderr)
        return 2
    from lpm_rt import ops
    from lpm_rt.benchmark.kernels import env_info

    res = dict(env=env_info() if cuda else dict(device="cpu (interpreter smoke)"), rows=[])

    def emit(row):
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            res["best"] = best_rows(res["rows"])
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    bench = timer(cuda, args.quick)
    dev = "cuda" if cuda else "cpu"
    prev = ops.get_backend()
    try:
        if args.op in (None, "fp8_linear"):              # the GEMM first: its goal is within reach
            tune_linear(dev, bench, args.smoke, emit)
        if args.op in (None, "paged_attention"):
            tune_attention(dev, bench, args.smoke, emit, tuple(m for m in args.modes.split(",") if m),
                           half_pages_only=args.half_pages)
    finally:
        ops.set_backend(prev)
    res["best"] = best_rows(res["rows"])
    print("\nfastest correct variant per op, mode and shape:")
    for r in res["best"]:
        print(f"  {r['op']:16s} {r['mode']:10s} {r['shape']:32s} BM={r['BLOCK_M']:<4d} BN={r['BLOCK_N']:<4d} "
              f"w={r['num_warps']} s={r['num_stages']}{' page-tiles' if r.get('PAGE_TILES') else ''}"
              f"{' tma' if r.get('TMA') or r.get('TMA_KV') else ''}{' overlap' if r.get('OVERLAP') else ''}  "
              f"{r['median_ms']:.3f} ms" +
              (f"  {r['tflops']:.0f} TFLOP/s" if cuda else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
