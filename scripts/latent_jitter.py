"""Where a streamed model's flicker comes from: its latents or its decoder. Streams LPM-Bench-mini's
held-out speaking scenario through the public API, records the latent frames the online step hands
to the decoder, and compares them with the ground truth's latents (the same clip through the
model's own VAE encoder):

* ``dz``: mean |z[f] - z[f-1]| over all latents, and over the outer ring of the latent grid
  (``dz_border``: background, which does not move in the world's clips);
* ``flicker_boundary`` / ``flicker_within``: the bench's flicker split at latent frames
  (``lpm_rt.world.bench.flicker_split``) of the decoded stream.

A generator whose latents jump from chunk to chunk while its decoder draws each latent frame
smoothly shows a large ``dz`` against the ground truth's and flicker at the boundaries only.

    python scripts/latent_jitter.py --model SRC [--seconds 30] [--voice synth] [--out F]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def _latent_stats(z: torch.Tensor) -> dict:
    """z: [C, F, h, w] -> mean |frame-to-frame change|, overall and on the grid's outer ring, and
    the mean |change| of each channel's spatial mean (a global shift of the frame)."""
    d = (z[:, 1:] - z[:, :-1]).abs()
    ring = torch.ones(z.shape[-2:], dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    g = z.mean((2, 3))
    return {"dz": float(d.mean()), "dz_border": float(d[..., ring].mean()),
            "d_channel_mean": float((g[:, 1:] - g[:, :-1]).abs().mean()), "std": float(z.std())}


def measure(src: str, seconds: float = 30.0, voice: str = "synth") -> dict:
    import lpm_rt
    from lpm_rt.train.data import _images
    from lpm_rt.world.bench import avatar_system, build_scenarios, flicker, flicker_split

    data = build_scenarios(0, 0.1, False, seconds, voice)
    conv, refs = data["scenarios"]["speaking"], data["references"]
    avatar = lpm_rt.load(src)
    model, latents = avatar.model, []
    refine = model._refine

    def keep(*a, **k):                               # the latents the step hands to the decoder
        z = refine(*a, **k)
        latents.append(z.detach().float()[0].cpu())
        return z

    model._refine = keep
    try:
        video = avatar_system(avatar, refs)("speaking", conv)
    finally:
        del model._refine                            # the class's method again
    zm = torch.cat(latents, 1)                                               # (C, F, h, w)
    vae = model.vae
    gt = conv.render(video.shape[1])
    T = vae.cfg.vae_temporal
    n = len(gt) // T * T
    p = next(vae.parameters())
    with torch.no_grad():
        x = _images(list(gt[:n]), video.shape[1], video.shape[2]).transpose(0, 1)[None]   # (1, 3, n, H, W)
        step = 24 * T
        zg = torch.cat([vae.encode(x[:, :, i:i + step].contiguous().to(p.device, p.dtype)).float()
                        for i in range(0, n, step)], 2)[0].cpu()
    F = min(zm.shape[1], zg.shape[1])
    rows = {}
    for name, z, frames in (("model", zm[:, :F], video), ("ground-truth", zg[:, :F], gt)):
        b, w = flicker_split(frames)
        rows[name] = dict(_latent_stats(z), flicker=flicker(frames), flicker_boundary=b, flicker_within=w)
    return {"model": src, "seconds": seconds, "voice": voice, "latent_frames": F, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", help="online model: a preset name or a directory (default demo)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the speaking scenario (default 30)")
    ap.add_argument("--voice", choices=("synth", "espeak"), default="synth", help="speech of the scenario")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be > 0")
    res = measure(args.model, args.seconds, args.voice)
    for name, r in res["rows"].items():
        print(f"{name:>12}: |dz| {r['dz']:.4f} (border {r['dz_border']:.4f}, channel means "
              f"{r['d_channel_mean']:.4f}, std {r['std']:.3f}); flicker {r['flicker']:.4f} = boundary "
              f"{r['flicker_boundary']:.4f} / within {r['flicker_within']:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
