"""The CPU runtime's hot paths at the demo's shapes, each timed two ways in one process (the
forms alternate, so the shared host's changing speed hits both alike): the form the runtime uses
and the one it replaced.

* VAE decode of one latent frame (4 video frames at 128x128): convolution weights channels-last
  (what ``lpm_rt.load`` places) vs NCHW;
* the streaming resampler, 16 kHz -> 24 kHz in 40 ms pieces: the tabulated kernel phases vs the
  direct windowed sinc (``Resampler.TABLE_LIMIT = 0``);
* 3-D RoPE on a chunk's q: one complex multiply vs the real-arithmetic form (ONNX export's).

Medians of ``--reps`` timings after warm-up; also the max |difference| of the two forms.

    python scripts/cpu_hotpaths.py [--threads 2] [--reps 15] [--out F.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from unittest import mock

import numpy as np
import torch


def _time(fn, inner):
    t = time.perf_counter()
    for _ in range(inner):
        out = fn()
    return (time.perf_counter() - t) / inner, out


def ab(new, old, reps, inner):
    """Alternating timings of two forms: medians (ms) and the max |new - old| of their outputs."""
    with torch.no_grad():
        for _ in range(3):
            new(), old()
        tn, to = [], []
        for _ in range(reps):
            t, a = _time(new, inner)
            tn.append(t)
            t, b = _time(old, inner)
            to.append(t)
    a, b = (torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x for x in (a, b))
    return {"new_ms": 1e3 * statistics.median(tn), "old_ms": 1e3 * statistics.median(to),
            "speedup": statistics.median(to) / statistics.median(tn),
            "max_abs_diff": float((a.double() - b.double()).abs().max())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    import lpm_rt
    from lpm_rt.model.audio import Resampler
    from lpm_rt.model.rope import grid_positions, rope_apply, rope_cos_sin, rope_rotate_real
    from lpm_rt.model.vae import DecoderCache

    g = torch.Generator().manual_seed(0)
    res = {}
    vae = lpm_rt.load("demo").model.vae.eval()
    nchw = copy.deepcopy(vae).to(memory_format=torch.contiguous_format)
    z = torch.randn(1, vae.cfg.vae_z_dim, 1, 16, 16, generator=g)
    res["vae_decode"] = ab(lambda: vae.decode(z, DecoderCache()), lambda: nchw.decode(z, DecoderCache()),
                           a.reps, 5)

    x = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)

    def resample():
        r = Resampler(16000)
        return np.concatenate([r.push(x[i:i + 640]) for i in range(0, len(x), 640)])

    def resample_direct():
        with mock.patch.object(Resampler, "TABLE_LIMIT", 0):
            return resample()
    res["resample_2s_16k"] = ab(resample, resample_direct, a.reps, 1)

    H, D = 8, 32
    cos, sin = rope_cos_sin(grid_positions(torch.tensor([5]), 8, 8), (6, 5, 5))
    qr = torch.randn(1, 64, H, D, generator=g)

    res["rope_chunk_q"] = ab(lambda: rope_apply(qr, cos, sin),       # its export form, called directly
                             lambda: rope_rotate_real(qr, cos[:, None, :], sin[:, None, :]), a.reps, 50)

    out = {"device": f"CPU: {platform.machine()} {platform.processor() or ''}".strip() + f", {a.threads} threads",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "reps": a.reps, "results": res}
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
