"""How much of the mouth survives a VAE round trip: the speaking scenario of LPM-Bench-mini
rendered, encoded and decoded by each VAE, then read by the world's analyzer.

Per VAE: the within-clip correlation of the read opening with the labels, its amplitude (std over
the labels' std), the mean frame-to-frame change of the mouth box in /255 -- the rendered
frames' own value is the real motion, anything above it is the decoder's flicker -- and the
reconstruction error (mean |error| in /255 and PSNR, whole frames and the mouth box).

    python scripts/vae_round_trip.py shipped out/m1 [--seconds 12] [--character default] [--out vae.json]

``--character bench`` (default): the benchmark's held-out character; ``default``: the shipped demo
character (``lpm_rt.assets``), in a speaking clip of its own.

A name is ``shipped`` (lpm_rt/assets/demo) or a run directory holding vae.safetensors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lpm_rt.config import preset
from lpm_rt.loader import SHIPPED_DEMO
from lpm_rt.model.vae import VAE
from lpm_rt.world.analyzer import Analyzer
from lpm_rt.world.bench import build_scenarios
from lpm_rt.world.render import landmarks, states_from_labels


def _box(conv, size: int) -> tuple:
    """A box around the mouth's track over the clip (rows, cols), padded by 10 % of the frame."""
    st = states_from_labels({k: np.asarray(v) for k, v in conv.labels.items()})
    xy = np.array([landmarks(conv.character, s, size, size)["mouth"] for s in st])
    pad = int(0.1 * size)
    (x0, y0), (x1, y1) = xy.min(0).astype(int) - pad, xy.max(0).astype(int) + pad
    return slice(max(y0, 0), min(y1, size)), slice(max(x0, 0), min(x1, size))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vaes", nargs="+", help="'shipped' or run directories with vae.safetensors")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--character", choices=("bench", "default"), default="bench")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    size = preset("demo").stream.height
    if args.character == "bench":
        conv = build_scenarios(0, 0.1, True, args.seconds)["scenarios"]["speaking"]
    else:
        from lpm_rt.assets import DEFAULT_CHARACTER_SEED
        from lpm_rt.world import Character, Conversation
        conv = Conversation.generate(1, args.seconds, "speaking", "calm", character=Character.random(DEFAULT_CHARACTER_SEED))
    frames = conv.render(size)
    T = preset("demo").model.vae_temporal
    n = (len(frames) // T) * T
    frames, labels = frames[:n], np.asarray(conv.labels["mouth_open"][:n])
    rows, cols = _box(conv, size)
    analyzer = Analyzer.train(n=1500, seed=0)

    def measure(name, video):
        seen = analyzer.predict(video)["mouth_open"]
        motion = np.abs(np.diff(video[:, rows, cols].astype(np.float32), axis=0)).mean()
        err = video.astype(np.float32) - frames.astype(np.float32)
        psnr = lambda e: float(10 * np.log10(255.0 ** 2 / max(float((e ** 2).mean()), 1e-12)))   # noqa: E731
        return dict(vae=name, character=args.character, corr=float(np.corrcoef(seen, labels)[0, 1]), amplitude=float(seen.std() / labels.std()),
                    mouth_box_motion_255=float(motion), l1_255=float(np.abs(err).mean()), psnr_db=psnr(err),
                    mouth_l1_255=float(np.abs(err[:, rows, cols]).mean()), mouth_psnr_db=psnr(err[:, rows, cols]))

    res = [measure("none (rendered frames)", frames)]
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous().float()[None] / 127.5 - 1.0
    for name in args.vaes:
        path = SHIPPED_DEMO / "vae.safetensors" if name == "shipped" else Path(name) / "vae.safetensors"
        vae = VAE(preset("demo").model)
        vae.load_state_dict(load_file(str(path)))
        with torch.no_grad():
            v = vae.eval().decode(vae.encode(x))
        res.append(measure(name, ((v[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()))
    for r in res:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
