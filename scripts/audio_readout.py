"""Held-out reading of an audio pre-training (`train base --audio-pretrain`): how well the
pre-trained encoder and its readers predict the listener's head pitch from the partner's audio
and the mouth's opening from the avatar's own, on world clips the pre-training never drew.

    python scripts/audio_readout.py --run out/RUN [--clips 24] [--out FILE]

``--run``: a `train base` run directory (its newest checkpoint holding ``aux_audio_readers``) or
one checkpoint directory under its ``ckpt/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lpm_rt.checkpoint import load_dir
from lpm_rt.train.audio import audio_readers, readout


def _checkpoint(run: Path) -> Path:
    if (run / "aux_audio_readers.safetensors").exists():
        return run
    latest = run / "ckpt" / "LATEST"
    if latest.exists():
        d = run / "ckpt" / latest.read_text().strip()
        if (d / "aux_audio_readers.safetensors").exists():
            return d
    raise SystemExit(f"{run}: no checkpoint with audio readers (was it run with --audio-pretrain?)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="train base run directory, or one of its checkpoints")
    ap.add_argument("--clips", type=int, default=24, help="held-out 30-s clips per figure (default 24)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--voice", default="synth", choices=("synth", "espeak", "mix"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    ck = _checkpoint(Path(a.run))
    model, _ = load_dir(str(ck))
    readers = audio_readers(model.cfg)
    readers.load_state_dict(load_file(str(ck / "aux_audio_readers.safetensors")))
    net = model.backbone.eval().float()
    res = {"what": __doc__.split("\n\n")[0], "checkpoint": str(ck), "device": f"{platform.machine()}, "
           f"{torch.get_num_threads()} CPU threads", "clips": a.clips, "seconds": a.seconds, "voice": a.voice,
           **{k: round(v, 3) for k, v in readout(net, readers.eval(), model.cfg, a.clips, a.seconds, a.voice).items()},
           "wall_s": round(time.time() - t0, 1)}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
