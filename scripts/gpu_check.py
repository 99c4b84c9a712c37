"""On a CUDA GPU: an h100 artifact streamed on its own cubins (the ``aot`` backend) against the
same weights through the JIT Triton kernels, with per-push times and launch counts.

    python scripts/gpu_check.py build/gpu/demo-h100 --out result.json

Checks that matter for the AOT issue and can only run on a GPU: the cubins load and launch with
cuda-python, no kernel is JIT-compiled on the aot path (Triton's cache folder stays empty), the
frames match the JIT kernels' (same code, the artifact's frozen tiles: a few bf16 ulps), and the
per-chunk step (backbone and refiner) captured and replayed as a CUDA graph (``runtime.cuda_graphs``,
what ``lpm_rt.load`` of a GPU artifact selects) gives the eager frames, on the cubins and on the
JIT kernels (``jit_graph_*``); and the artifact's frames
against the fp32 reference ops on the same weights (``ref_*``: the whole quantized path's error).
Wall time per push of PUSH_S seconds of audio (``push_ms_*``; ``rtf_*`` = that / PUSH_S): median
over the pushes after two of warm-up, CUDA-synchronized.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


PUSH_S = 0.5                          # audio pushed per call, as a client streaming half-second packets


def device_kernels(prof, top: int = 20) -> dict:
    """GPU kernels of a torch.profiler trace (CUDA-graph replays included: CUPTI reports their
    kernels): count and microseconds, in total and for the ``top`` kernels by time."""
    from torch.autograd import DeviceType

    rows: dict = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            r = rows.setdefault(e.name, [0, 0.0])
            r[0] += 1
            r[1] += e.time_range.elapsed_us()
    best = sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]
    return dict(kernels=sum(r[0] for r in rows.values()), kernel_us=round(sum(r[1] for r in rows.values()), 1),
                top=[[name[:120], n, round(us, 1)] for name, (n, us) in best])


def stream(avatar, seconds: float, sync, profile: dict | None = None, kernels: dict | None = None):
    """Stream ``seconds`` of audio in PUSH_S pushes -> (frames, per-push seconds). ``profile``: a
    dict that receives the top functions by own time of the last push under cProfile (that push
    is left out of the times): where a push's host time goes. ``kernels``: a dict that receives
    the GPU kernels of the last push under torch.profiler (:func:`device_kernels`, that push left
    out of the times too): where its device time goes."""
    import cProfile
    import pstats

    import numpy as np

    from lpm_rt.assets import default_character

    sr = avatar.spec.sample_rate
    t = np.arange(int(seconds * sr)) / sr
    pcm = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    refs = default_character(avatar.spec.height, avatar.spec.width)
    frames, times = [], []
    with avatar.open_session(references=refs, prompt="calm", seed=0) as sess:
        step = int(sr * PUSH_S)
        starts = list(range(0, len(pcm), step))
        for i in starts:
            prof = cProfile.Profile() if profile is not None and i == starts[-1] else None
            tprof = None
            if kernels is not None and i == starts[-1]:
                import torch
                tprof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                           torch.profiler.ProfilerActivity.CUDA])
            sync()
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            if tprof:
                tprof.__enter__()
            sess.push_audio(pcm[i:i + step], sr)
            got = list(sess.frames())
            sync()
            if tprof:
                tprof.__exit__(None, None, None)
                kernels.update(device_kernels(tprof), push_ms_profiled=1e3 * (time.perf_counter() - t0))
            if prof:
                prof.disable()
                stats = pstats.Stats(prof).stats
                top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:25]        # by own time
                profile.update(calls=sum(v[1] for v in stats.values()), top=[
                    [f"{f[0].split('site-packages/')[-1].split('/work/')[-1]}:{f[1]}({f[2]})", v[1], round(v[2], 4)]
                    for f, v in top])
            if got and not (prof or tprof):
                times.append(time.perf_counter() - t0)
            frames += [f.image for f in got]
        sess.flush()
        frames += [f.image for f in sess.frames()]
    return np.stack(frames).astype(np.float32), times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", help="an h100 artifact directory (lpm-rt compile --target h100)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="triton-aot-")
    os.environ["TRITON_CACHE_DIR"] = cache                   # before triton is imported
    import numpy as np
    import torch

    import lpm_rt
    from lpm_rt.artifact import read_manifest
    from lpm_rt.benchmark.launches import block_launches
    from lpm_rt.config import RuntimeConfig

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize
    from lpm_rt.benchmark import git_state

    res = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, artifact=args.artifact, **git_state())
    meta = read_manifest(args.artifact)
    ms = lambda t: 1e3 * statistics.median(t[2:] or t)                  # noqa: E731
    res["push_s"] = PUSH_S
    # the default load of a GPU artifact: the aot backend, the per-chunk step as one CUDA graph
    aot = lpm_rt.load(args.artifact)
    rt = aot.model.cfg.runtime
    res.update(backend=rt.ops_backend, cuda_graphs=rt.cuda_graphs, kernels_loaded=len(getattr(aot, "kernels", {})))
    try:
        res["aot_graph_kernels"] = {}
        v_g, t_g = stream(aot, args.seconds, sync, kernels=res["aot_graph_kernels"])
        res["push_ms_aot_graphs"] = ms(t_g)
    except Exception as e:                                   # noqa: BLE001 -- report, keep the rest
        v_g, res["graph_error"] = None, f"{type(e).__name__}: {str(e)[:300]}"
    eager = lpm_rt.load(args.artifact, runtime=rt.replace(cuda_graphs=False))
    res["aot_push_profile"] = {}
    v_aot, t_aot = stream(eager, args.seconds, sync, profile=res["aot_push_profile"])
    res["triton_cache_files_after_aot"] = sum(len(f) for _, _, f in os.walk(cache))
    tgt = meta["target"]
    jit = lpm_rt.load(args.artifact, runtime=RuntimeConfig(device="cuda", dtype=tgt["act_dtype"],
                                                           kv_dtype=tgt["kv_dtype"], ops_backend="triton"))
    res["jit_push_profile"] = {}
    v_jit, t_jit = stream(jit, args.seconds, sync, profile=res["jit_push_profile"])
    # the GEMM tiles each path runs: the artifact's frozen ones, the JIT autotuner's per (M, N, K)
    import csrc_triton.fp8_linear as lin
    res["aot_fp8_linear_tiles"] = sorted({f"{r['name']}: {r['constexprs'].get('BLOCK_M')}x{r['constexprs'].get('BLOCK_N')}"
                                          for r in meta["kernels"] if r.get("role") == "linear"})
    res["jit_fp8_linear_picks"] = [f"{key}: {cfg}" for key, cfg in (getattr(lin._AUTOTUNED, "cache", None) or {}).items()]
    diff = (v_aot - v_jit)
    res.update(frames=len(v_aot), max_abs_diff_255=float(abs(diff).max()) if diff.size else None,
               mean_abs_diff_255=float(abs(diff).mean()) if diff.size else None,
               push_ms_aot=ms(t_aot), push_ms_jit=ms(t_jit))
    if v_g is not None:
        res["graph_max_abs_diff_255"] = float(abs(v_g - v_aot).max())
    # the JIT kernels in the captured step as well (RuntimeConfig(cuda_graphs=True) without an
    # artifact): whether that path replays the eager frames too
    try:
        jit_g = lpm_rt.load(args.artifact, runtime=jit.model.cfg.runtime.replace(cuda_graphs=True))
        res["jit_graph_kernels"] = {}
        v_jg, t_jg = stream(jit_g, args.seconds, sync, kernels=res["jit_graph_kernels"])
        res.update(push_ms_jit_graphs=ms(t_jg), jit_graph_max_abs_diff_255=float(abs(v_jg - v_jit).max()))
    except Exception as e:                                   # noqa: BLE001 -- report, keep the rest
        res["jit_graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    # the artifact path against the fp32 reference ops on the same (dequantized) weights: what
    # quantized activations and pages, FP8 GEMMs and bf16 cost, end to end
    try:
        ref = lpm_rt.load(args.artifact, runtime=RuntimeConfig(device="cuda", dtype="fp32", kv_dtype="fp32",
                                                               ops_backend="ref"))
        v_ref, t_ref = stream(ref, args.seconds, sync)
        d = v_aot - v_ref
        res.update(ref_max_abs_diff_255=float(abs(d).max()), ref_mean_abs_diff_255=float(abs(d).mean()),
                   ref_psnr_db=float(10 * np.log10(255.0 ** 2 / max(float((d ** 2).mean()), 1e-12))),
                   push_ms_ref_fp32=ms(t_ref))
    except Exception as e:                                   # noqa: BLE001 -- report, keep the rest
        res["ref_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    res.update({f"rtf_{k[8:]}": v / (1e3 * PUSH_S) for k, v in list(res.items()) if k.startswith("push_ms_")})
    try:
        from lpm_rt import ops
        ops.set_backend("aot")
        res["refiner_block_launches"] = len(block_launches(aot.model)["block"])
    except Exception as e:                                   # noqa: BLE001 -- report, keep the rest
        res["refiner_block_launches"] = f"{type(e).__name__}: {e}"
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["triton_cache_files_after_aot"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
