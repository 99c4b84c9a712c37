"""The shipped-demo test's pixel metrics (tests/test_demo_model.py) for any model directory.

Streams the test's unseen speech and the same length of silence through MODEL with the default
character, drops the first 12 frames as the test does, and prints one JSON line:

* ref_err: mean |time-averaged frame - the front reference| (/255; the test wants < 15);
* flicker: mean |frame-to-frame change| over the whole frame (/255; the test wants < 8);
* motion_talk, motion_quiet: the same in the lower-face box, with speech and with silence
  (the test wants talk > 1.5x quiet);
* diff: mean |speech - silence| in that box (the test wants > 4).

Diagnostics that are not runtime options: ``--vae DIR`` decodes with another run's VAE (a
decoder fine-tuned on the same latent space), ``--no-refiner`` skips the refiner (its input
passes through), ``--refiner-sigma S`` runs the refiner at another noise level.

    python scripts/demo_response.py MODEL [--vae DIR] [--noise fixed] [--no-refiner] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import lpm_rt  # noqa: E402
from test_demo_model import _mouth, _speech, _stream  # noqa: E402  (the test's own definitions)


def measure(av, seconds: float) -> dict:
    pcm, rate = _speech(seconds)
    talk, ref = _stream(av, pcm, rate)
    quiet, _ = _stream(av, np.zeros_like(pcm), rate)
    talk, quiet = talk[12:], quiet[12:]
    motion = lambda v: float(np.abs(np.diff(_mouth(v), axis=0)).mean())   # noqa: E731
    return dict(ref_err=float(np.abs(talk.mean(0) - ref).mean()), flicker=float(np.abs(np.diff(talk, axis=0)).mean()),
                motion_talk=motion(talk), motion_quiet=motion(quiet),
                diff=float(np.abs(_mouth(talk) - _mouth(quiet)).mean()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="preset name (demo) or model directory")
    ap.add_argument("--vae", default=None, metavar="DIR", help="decode with this model directory's VAE")
    ap.add_argument("--noise", choices=("fresh", "fixed"), default="fresh", help="the runtime's noise mode (RuntimeConfig.noise)")
    ap.add_argument("--no-refiner", action="store_true", help="skip the refiner (diagnostic)")
    ap.add_argument("--refiner-sigma", type=float, default=None, help="run the refiner at this noise level")
    ap.add_argument("--seconds", type=float, default=3.0, help="speech length (the test: 3)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    av = lpm_rt.load(a.model)                       # its own runtime; only the noise mode changes
    cfg = av.model.cfg
    av.model.cfg = av.cfg = cfg.replace(runtime=cfg.runtime.replace(noise=a.noise))
    if a.vae:
        av.model.vae.load_state_dict(lpm_rt.load(a.vae).model.vae.state_dict())
    if a.no_refiner:
        av.model._refine = lambda state, x0, *rest: x0
    if a.refiner_sigma is not None:
        cfg = av.model.cfg
        av.model.cfg = av.cfg = cfg.replace(stream=cfg.stream.replace(refiner_sigma=a.refiner_sigma))
    r = measure(av, a.seconds)
    print(json.dumps({"model": a.model, "vae": a.vae, "noise": a.noise, "no_refiner": a.no_refiner,
                      "refiner_sigma": av.model.cfg.stream.refiner_sigma, **{k: round(v, 3) for k, v in r.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
