"""End-to-end streaming benchmark: what a user waits for, measured through the public API.

Figures: time to first frame after ``open_session`` (audio pushed live in 40 ms pieces),
chunk latency p50/p99, real-time factor (compute seconds per video second), per-stage breakdown
(audio features, backbone, refiner, VAE decode, colour conversion + session), and for a long
live-style stream the cost of each video second late vs early and RSS growth.
Results: JSON under bench/results/ with device, versions and git SHA.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..config import KVDtype

__all__ = ["main", "run_stream_bench", "environment"]


def environment() -> dict:
    """Device, versions and git state (SHA, uncommitted changes) for a results file."""
    from . import git_state

    dev = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    return {"device": dev, "torch": torch.__version__, "python": platform.python_version(),
            **git_state(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def run_stream_bench(model="demo", seconds=120.0, warmup_s=2.0, seed=0, runtime=None, fp8=False) -> dict:
    """``runtime``: an ``lpm_rt.RuntimeConfig`` (device, dtype, kv_dtype, ops backend) or None for
    the model's own; ``fp8``: block linears as e4m3 GEMMs (``OnlineLPM.quantize_fp8_``, 1x128
    weight blocks where K allows)."""
    import lpm_rt
    from lpm_rt.assets import builtin_conversation

    avatar = lpm_rt.load(model, runtime=runtime)
    if fp8:
        avatar.model.quantize_fp8_(block=128)
    cuda = avatar.cfg.runtime.device.startswith("cuda")
    spec, fpc = avatar.spec, avatar.cfg.stream.frames_per_chunk
    (speech, rate), (listener, _) = builtin_conversation(seconds, seed=seed)
    piece = rate * 40 // 1000
    stages: dict = {}
    chunk_ms, per_frame_t, rss = [], [], []

    t_open = time.perf_counter()
    sess = avatar.open_session(prompt="calm", seed=seed)
    t_opened = time.perf_counter()
    last = [time.perf_counter()]

    def mark(stage):                      # stage ends: on a GPU, wait for the stage's kernels
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        stages.setdefault(stage, []).append(now - last[0])
        last[0] = now

    sess._state.timer = mark
    ttff = None
    n = 0
    for i in range(0, len(speech), piece):
        sess.push_audio(speech[i:i + piece], rate, "speaker")
        sess.push_audio(listener[i:i + piece], rate, "listener")
        t0 = time.perf_counter()
        last[0] = t0
        got = 0
        for _ in sess.frames():
            got += 1
            if ttff is None:
                ttff = time.perf_counter() - t_open
        if got:
            t1 = time.perf_counter()
            chunk_ms.append((t1 - t0) * 1e3 / (got // fpc or 1))
            stages.setdefault("colour+session", []).append(t1 - last[0])
            per_frame_t += [(t1 - t0) / got] * got
            n += got
            if n % (spec.fps * 10) < got:
                rss.append(_rss())
    sess.close()
    per_sec = np.add.reduceat(np.array(per_frame_t), np.arange(0, len(per_frame_t), spec.fps))
    w = int(warmup_s)
    early, late = per_sec[w:w + 10], per_sec[-10:]
    total = float(sum(per_frame_t))
    return {
        "model": model, "trained": avatar.trained, "runtime": {**asdict(avatar.cfg.runtime),
                                                               "kv_dtype": avatar.cfg.runtime.kv_dtype.value},
        "fp8_linears": bool(fp8), "resolution": f"{spec.width}x{spec.height}", "fps": spec.fps,
        "video_seconds": n / spec.fps, "frames": n,
        "time_to_first_frame_s": ttff, "session_open_s": t_opened - t_open,
        "real_time_factor": total / (n / spec.fps),
        "chunk_latency_ms": {"p50": float(np.percentile(chunk_ms, 50)), "p99": float(np.percentile(chunk_ms, 99))},
        "stage_ms_per_chunk": {k: float(np.median(v) * 1e3) for k, v in stages.items()},
        "cost_per_video_second_s": {"early_median": float(np.median(early)), "late_median": float(np.median(late)),
                                    "late_over_early": float(np.median(late) / np.median(early))}
        if len(early) and len(late) else None,                       # None: too short a stream
        "rss_mib": {"first": rss[0] / 2**20, "last": rss[-1] / 2**20,
                    "growth": (rss[-1] - rss[0]) / rss[0]} if len(rss) > 1 else None,
        **environment(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lpm-rt bench stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seconds", type=float, default=120.0, help="length of the live-style stream")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the model's runtime)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="activation / weight dtype")
    p.add_argument("--kv-dtype", choices=[k.value for k in KVDtype], default=None,
                   help="history page dtype (fp8k: e4m3 K pages, V pages in the activation dtype)")
    p.add_argument("--backend", choices=("ref", "triton"), default=None, help="ops backend")
    p.add_argument("--fp8", action="store_true", help="block linears as e4m3 GEMMs with fused epilogues")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each session's per-chunk step as one CUDA graph (runtime.cuda_graphs)")
    p.add_argument("--out", default="bench/results", help="directory for the JSON result")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    runtime = None
    if a.device or a.dtype or a.kv_dtype or a.backend or a.cuda_graphs:
        from lpm_rt.config import RuntimeConfig
        kw = {k: v for k, v in (("device", a.device), ("dtype", a.dtype), ("kv_dtype", a.kv_dtype),
                                ("ops_backend", a.backend), ("cuda_graphs", a.cuda_graphs)) if v}
        runtime = RuntimeConfig(**kw)
    r = run_stream_bench(a.model, a.seconds, runtime=runtime, fp8=a.fp8)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = r["runtime"]["device"].split(":")[0]
    tag = "".join(f"_{x}" for x in (r["runtime"]["ops_backend"] if a.backend else "", "fp8" if a.fp8 else "",
                                    "graphs" if a.cuda_graphs else "") if x)
    path = out / f"stream_{Path(a.model).name}_{dev}{tag}.json"
    path.write_text(json.dumps(r, indent=2))
    print(json.dumps({k: r[k] for k in ("model", "trained", "resolution", "real_time_factor", "time_to_first_frame_s",
                                         "chunk_latency_ms", "stage_ms_per_chunk", "cost_per_video_second_s", "rss_mib",
                                         "device")}, indent=2))
    print(f"wrote {path}")
    return 0
