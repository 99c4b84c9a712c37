"""Does a teacher use the speaker audio? Its flow loss with the right audio vs audio from another clip.

On held-out speaking clips of the world (clip indices no training run draws), the teacher's
flow-matching loss at fixed noise levels, with the same noise, under three speaker tracks:
the clip's own, one rolled across the batch (real speech, wrong words) and silence. A teacher
that uses the audio has a lower loss with the right track; one that ignores it has the same
loss under all three. The loss is reported over the whole frame and inside the mouth
(:func:`lpm_rt.train.mouth.mouth_weight`'s Gaussian alone), where the gap is not diluted by the
~99 % of the frame the audio does not predict.

The loss gap is small even for a teacher that uses the audio: the mouth opening is a few
per cent of the latents' variance around the mouth. So the script also reports the teacher's
lip sync in latent space: a :class:`~lpm_rt.train.mouth.MouthProbe` (fitted on encoder latents
of other clips) reads the mouth opening from the x0 the teacher predicts at a high noise level,
where it cannot see the mouth; the within-clip correlation of that reading with the world's
label, under each audio track.

``--track listener`` asks the same of the listener track on the world's listening clips, whose
character nods on the partner's stressed syllables: the tracks vary the partner's audio, and a
:class:`~lpm_rt.train.mouth.HeadProbe` reads the head's vertical position (``head_sync``).

    python scripts/audio_gap.py --model runs/base [--clips 8] [--voice espeak] [--track listener] [--out gap.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from lpm_rt.checkpoint import load_dir
import numpy as np

from lpm_rt.train.base import encode_batch
from lpm_rt.train.mouth import HeadProbe, MouthProbe, latent_mouth_weight
from lpm_rt.train.data import WorldSource, clip_frames, collate
from lpm_rt.train.flow import SILENCE_MEL, Cond, add_noise, randn, velocity

HELD_OUT = 900_000_000          # clip indices far above any training run's


def _within_corr(a: torch.Tensor, b: torch.Tensor, lag: int = 0) -> float:
    """Correlation of [B, F] readings after removing each clip's mean (identity is not lip sync);
    ``lag`` > 0: ``a`` read ``lag`` latent frames after ``b`` (a mouth that trails the audio), < 0 before."""
    if lag > 0:
        a, b = a[:, lag:], b[:, :-lag]
    elif lag < 0:
        a, b = a[:, :lag], b[:, -lag:]
    a, b = (x - x.mean(1, keepdim=True) for x in (a.double(), b.double()))
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


@torch.no_grad()
def audio_gap(model, clips: int = 8, frames: int = 8, sigmas=(0.3, 0.5, 0.7, 0.9), seed: int = 0,
              voice: str = "synth", track: str = "speaker", read_sigma: float = 0.9) -> dict:
    """The figures above; the sync readings from the x0 predicted at ``read_sigma`` (at 1.0 the
    noisy latents carry nothing of the clip, so what the reading follows comes from the
    conditioning alone)."""
    if track not in ("speaker", "listener"):
        raise ValueError("track must be speaker or listener")
    cfg = model.cfg
    s = cfg.stream
    listen = track == "listener"
    kind, key = (HeadProbe, "head_sync") if listen else (MouthProbe, "lip_sync")
    src = WorldSource(cfg, clip_frames(cfg, frames), modes=("listening" if listen else "speaking",), voice=voice)
    batch = collate([src.clip(HELD_OUT + seed * 1000 + i) for i in range(clips)], cfg)
    x0, cond = encode_batch(model.vae, batch)
    fit = [collate([src.clip(HELD_OUT + 500 + seed * 1000 + i)], cfg) for i in range(4 * clips)]
    probe = kind((s.height, s.width), cfg.model.vae_temporal).fit(
        [encode_batch(model.vae, b)[0] for b in fit], [b.mouth for b in fit])
    label = probe.target(batch.mouth)                                              # (B, F)
    bump = latent_mouth_weight(cfg.model, batch.mouth, 1.0, (s.height, s.width)) - 1.0     # (B, 1, F, h, w)
    spk, lis = cond.mels
    mine = lis if listen else spk                          # the track under test; the other stays

    def both(mel):
        return (spk, mel) if listen else (mel, lis)
    tracks = {"right": mine, "rolled": mine.roll(1, 0), "silence": torch.full_like(mine, SILENCE_MEL)}
    net = model.backbone.eval()
    g = torch.Generator().manual_seed(seed)
    noise = randn(x0.shape, g, x0.device)
    out = {k: {"frame": 0.0, "mouth": 0.0} for k in tracks}
    sg = float(read_sigma)
    for name, mel in tracks.items():                       # lip (head) sync of the x0 predicted at sg
        c = Cond(cond.tag_ids, both(mel), cond.refs, cond.ref_kinds)
        xs = add_noise(x0, noise, torch.full((clips,), sg))
        v = velocity(net, xs, torch.full((clips, frames), 1000.0 * sg), c, ref_time_index=s.ref_time_index)
        read = probe.read(xs - sg * v, batch.mouth)
        out[name][key] = _within_corr(read, label)
        out[name][f"{key}_by_lag"] = {str(k): _within_corr(read, label, k) for k in (-1, 0, 1)}
    out["probe_on_data"] = _within_corr(probe.read(x0, batch.mouth), label)
    for sg in sigmas:
        sig = torch.full((clips,), sg)
        xs = add_noise(x0, noise, sig)
        t = torch.full((clips, frames), 1000.0 * sg)
        for name, mel in tracks.items():
            c = Cond(cond.tag_ids, both(mel), cond.refs, cond.ref_kinds)
            err = (velocity(net, xs, t, c, ref_time_index=s.ref_time_index) - (noise - x0)).pow(2)
            out[name]["frame"] += float(err.mean()) / len(sigmas)
            out[name]["mouth"] += float((bump * err).mean() / bump.expand_as(err).mean()) / len(sigmas)
    for part in ("frame", "mouth"):
        out[f"gap_{part}"] = (out["rolled"][part] - out["right"][part]) / out["rolled"][part]
    out.update(clips=clips, frames=frames, sigmas=list(sigmas), voice=voice, track=track, read_sigma=float(read_sigma))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a `train base` run directory (its backbone is the teacher)")
    ap.add_argument("--clips", type=int, default=8, help="held-out speaking (listening) clips")
    ap.add_argument("--frames", type=int, default=8, help="latent frames per clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--voice", choices=("synth", "espeak"), default="synth", help="speech of the clips")
    ap.add_argument("--track", choices=("speaker", "listener"), default="speaker",
                    help="the audio track under test: the speaker's (lip sync, speaking clips) or the "
                         "listener's (head motion, listening clips)")
    ap.add_argument("--read-sigma", type=float, default=0.9,
                    help="noise level of the x0 the probe reads (default 0.9; 1.0: from the conditioning alone)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    if not 0.0 < a.read_sigma <= 1.0:
        ap.error("--read-sigma must be in (0, 1]")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model, _ = load_dir(a.model)
    res = audio_gap(model, a.clips, a.frames, seed=a.seed, voice=a.voice, track=a.track, read_sigma=a.read_sigma)
    key = "head_sync" if a.track == "listener" else "lip_sync"
    for k in ("right", "rolled", "silence"):
        print(f"{k:8s} frame {res[k]['frame']:.4f}  mouth {res[k]['mouth']:.4f}  {key} {res[k][key]:+.3f}")
    print(f"{key} by lag, latent frames (> 0: the reading trails the truth):")
    for k in ("right", "rolled", "silence"):
        print(f"  {k:8s} " + "  ".join(f"{lag}: {v:+.3f}" for lag, v in res[k][f"{key}_by_lag"].items()))
    print(f"probe on the data's own latents (the ceiling): {res['probe_on_data']:+.3f}")
    print(f"relative gap (rolled - right) / rolled: frame {res['gap_frame']:+.4f}  mouth {res['gap_mouth']:+.4f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
