"""Cold start to first frame, each measurement in a fresh Python process.

    python scripts/cold_start.py --model build/demo-h100            # an artifact: no compiler
    python scripts/cold_start.py --model demo --device cuda --dtype bf16 --backend triton
                                                                   # JIT, with an empty Triton cache

The child process times: interpreter start -> ``import lpm_rt`` -> ``lpm_rt.load`` (verify,
weights, kernels) -> ``open_session`` (reference prefill) -> the first frame out of
``frames()`` after pushing one second of speech. With ``--backend triton`` it points
TRITON_CACHE_DIR at a new empty folder, so every kernel is compiled in the measurement (what a
device without a warm cache pays); ``--warm-cache DIR`` reuses DIR instead. Prints one JSON
object per run (median of --runs) and writes it to --out if given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, torch
import lpm_rt
from lpm_rt.assets import default_character
from lpm_rt.config import RuntimeConfig
t_import = time.perf_counter()
a = json.loads(sys.argv[1])
rt = None
if a["device"] or a["dtype"] or a["backend"] or a["kv_dtype"]:
    kw = {k: v for k, v in (("device", a["device"]), ("dtype", a["dtype"]), ("ops_backend", a["backend"]),
                            ("kv_dtype", a["kv_dtype"])) if v}
    rt = RuntimeConfig(**kw)
avatar = lpm_rt.load(a["model"], runtime=rt)
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
sync()
t_load = time.perf_counter()
refs = default_character(avatar.spec.height, avatar.spec.width)
prof = None
if a["profile"]:                          # where opening a session spends its time
    import cProfile, pstats
    prof = cProfile.Profile()
    prof.enable()
sess = avatar.open_session(references=refs, prompt="calm", seed=0)
sync()
t_open = time.perf_counter()
top = []
if prof is not None:
    prof.disable()
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:25]
    top = [[f"{f[0].split('site-packages/')[-1].split('/work/')[-1]}:{f[1]}({f[2]})", round(v[3], 4)]
           for f, v in rows]
sr = avatar.spec.sample_rate
t = np.arange(sr) / sr
sess.push_audio((0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), sr)
frame = next(iter(sess.frames()))
sync()
t_first = time.perf_counter()
sess.close()
print("RESULT " + json.dumps(dict(import_s=t_import - t0, load_s=t_load - t_import, open_s=t_open - t_load,
                                  first_frame_s=t_first - t_open, frame_shape=list(frame.image.shape),
                                  **(dict(open_profile=top) if top else {}))))
"""


def run_once(args, cache_dir: str | None) -> dict:
    env = dict(os.environ)
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = cache_dir
    spec = dict(model=args.model, device=args.device, dtype=args.dtype, backend=args.backend, kv_dtype=args.kv_dtype,
                profile=args.profile_open)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"cold start run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    r["process_to_first_frame_s"] = wall
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="preset name, model dir or compiled artifact dir")
    ap.add_argument("--device", default=None, help="runtime device (default: the model's / the artifact's)")
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--kv-dtype", default=None, choices=("fp32", "bf16", "fp16", "fp8", "fp8k"))
    ap.add_argument("--backend", default=None, choices=("ref", "triton", "aot"), help="ops backend")
    ap.add_argument("--warm-cache", default=None, help="reuse this TRITON_CACHE_DIR instead of an empty one")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes to take the median of (default 3)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    ap.add_argument("--profile-open", action="store_true",
                    help="also record the 25 functions opening the session spends most time in (cProfile)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    runs = []
    for i in range(args.runs):
        if args.backend == "triton" and args.warm_cache is None:
            with tempfile.TemporaryDirectory(prefix="triton-cold-") as d:
                runs.append(run_once(args, d))
        else:
            runs.append(run_once(args, args.warm_cache))
        print(f"run {i + 1}/{args.runs}: {runs[-1]['process_to_first_frame_s']:.2f} s to the first frame",
              file=sys.stderr)
    keys = [k for k in runs[0] if k.endswith("_s")]
    import torch

    from lpm_rt.benchmark import git_state
    res = dict(model=args.model, device=args.device, dtype=args.dtype, backend=args.backend,
               triton_cache="warm" if args.warm_cache else ("empty" if args.backend == "triton" else "n/a"),
               runs=args.runs, median={k: statistics.median(r[k] for r in runs) for k in keys},
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, **git_state(), all=runs)
    print(json.dumps(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
