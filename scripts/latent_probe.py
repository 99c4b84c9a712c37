"""Where does a model lose the mouth? A linear probe of mouth opening in its latent space.

A ridge probe is fitted from the VAE encoder's latents of ground-truth speaking clips (the
world's labels: mouth opening per video frame, four per latent frame) and applied, held out,
to (1) the encoder's latents of LPM-Bench-mini's speaking scenario and (2) the latents the
model's online stream generates for the same audio before its decoder sees them. High (1) and
low (2): the backbone does not put the mouth into the latents. (3) the same probe from the
speaker track's own log-mel of each latent frame says whether the audio the backbone is given
carries the mouth at all. Each latent frame stands for 4 video frames: the ``*_within_corr``
figures are a second probe's, fitted to each frame's deviation from its latent frame's mean
opening (the mouth's motion inside a latent frame), the only part a decoder could draw beyond
one mouth per latent frame. Compare with the ground truth
through the VAE (``lpm-rt bench quality --vae``): the decoder's share.

Caveat: this probe reads the whole frame and is fitted on one character, so it transfers poorly
to a stream whose head sits a little differently; ``scripts/stream_stages.py`` reads the mouth
where it is (:class:`lpm_rt.train.mouth.MouthProbe`) and is the better measure of (2).

    python scripts/latent_probe.py --model demo --out bench/results/demo_latent_probe.json
    python scripts/latent_probe.py --model demo --base runs/base      # + a teacher's sampled latents
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import lpm_rt
from lpm_rt.world import Character, Conversation, Scene
from lpm_rt.world.bench import SR, build_scenarios, lip_sync_split


def _latents(vae, frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T // 4, z * h * w] encoder latents."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous().float()[None] / 127.5 - 1.0
    with torch.no_grad():
        z = vae.encode(x)[0]                                        # (z, F, h, w)
    return z.transpose(0, 1).reshape(z.shape[1], -1).numpy()


def _ridge(X, Y, lam):
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    W = np.linalg.solve(Xn.T @ Xn + lam * np.eye(X.shape[1]), Xn.T @ (Y - Y.mean(0)))
    return lambda Z: ((Z - mu) / sd) @ W + Y.mean(0)


def _mel_frames(conv, cfg) -> np.ndarray:
    """The speaker track's log-mel of each latent frame, as the model receives it: [F, 16 * n_mels]."""
    from lpm_rt.train.data import _track_mel
    n, ctx = conv.num_frames // cfg.model.vae_temporal, cfg.model.audio_context
    mel = _track_mel(conv.self_audio, 0, conv.sample_rate, n, cfg)
    return mel.view(ctx + n, -1, mel.shape[-1])[ctx:].reshape(n, -1).numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", help="model to probe (as lpm_rt.load takes it)")
    ap.add_argument("--base", default=None, metavar="DIR",
                    help="also probe a `train base` teacher's sampled latents (offline, clip by clip)")
    ap.add_argument("--base-steps", type=int, default=8, help="ODE steps of the teacher's sampler")
    ap.add_argument("--clips", type=int, default=4, help="12 s speaking clips to fit the probe on")
    ap.add_argument("--lam", type=float, default=10.0, help="ridge strength")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    avatar = lpm_rt.load(args.model)
    vae = avatar.model.vae.float().eval()
    T = vae.cfg.vae_temporal
    data = build_scenarios(0, 0.1, True, 12.0)
    conv, refs = data["scenarios"]["speaking"], data["references"]
    # fit: other conversations of the bench's character (the probe reads a position in the frame)
    X, Y, D, M = [], [], [], []
    for seed in range(args.clips):
        c = Conversation.generate(100 + seed, 12.0, "speaking", "calm", character=Character.random(1_000_003),
                                  scene=Scene.random(2_000_003), base_yaw=0.0)
        f = c.render(128)[: (c.num_frames // T) * T]
        X.append(_latents(vae, f))
        lab = np.asarray(c.labels["mouth_open"][:len(f)], np.float64).reshape(-1, T)
        Y.append(lab.mean(1))
        D.append(lab - lab.mean(1, keepdims=True))
        M.append(_mel_frames(c, avatar.cfg))
    probe = _ridge(np.concatenate(X), np.concatenate(Y), args.lam)
    within = _ridge(np.concatenate(X), np.concatenate(D), args.lam)
    audio_probe = _ridge(np.concatenate(M), np.concatenate(Y), 100.0)
    # the online stream's own latents, captured at the decoder's input
    captured, decode = [], avatar.model.vae.decode
    avatar.model.vae.decode = lambda z, cache=None: (captured.append(z.detach().float().clone()), decode(z, cache))[1]
    use = [lpm_rt.Reference(img, kind) for img, kind in refs[:3]]
    with avatar.open_session(references=use, prompt=conv.prompt, seed=0) as sess:
        sess.push_audio(conv.self_audio, SR, track="speaker")
        sess.push_audio(conv.partner_audio, SR, track="listener")
        sess.flush()
        for _ in sess.frames():
            pass
    avatar.model.vae.decode = decode
    z = torch.cat(captured, 2)[0]
    n = min(z.shape[1], conv.num_frames // T)
    online = z.transpose(0, 1).reshape(z.shape[1], -1).numpy()[:n]
    lab = np.asarray(conv.labels["mouth_open"][:n * T], np.float64)
    y = lab.reshape(-1, T).mean(1)

    def within_corr(lat):                     # held-out correlation of the within-latent-frame motion
        p = within(lat).ravel()
        return lip_sync_split(p, lab[:len(p)], T)[1]
    gt = _latents(vae, conv.render(128)[:n * T])
    res = {"model": args.model, "latent_frames": int(n), "probe_fit_clips": args.clips, "lam": args.lam,
           "speaker_mel_corr": float(np.corrcoef(audio_probe(_mel_frames(conv, avatar.cfg)[:n]), y)[0, 1]),
           "encoder_latents_corr": float(np.corrcoef(probe(gt), y)[0, 1]),
           "online_latents_corr_by_lag": {str(k): float(np.corrcoef(probe(online)[k:], y[:n - k])[0, 1])
                                          for k in range(3)},
           "encoder_latents_within_corr": within_corr(gt), "online_latents_within_corr": within_corr(online)}
    if args.base:
        from lpm_rt.train.sample import TeacherSampler
        sampler = TeacherSampler(args.base, steps=args.base_steps)
        got, dec = [], sampler.vae.decode
        sampler.vae.decode = lambda z, cache=None: (got.append(z.detach().float().clone()), dec(z, cache))[1]
        sampler.render(conv.self_audio, conv.partner_audio, SR, n * T, conv.prompt, refs)
        zb = torch.cat(got, 2)[0]
        base = zb.transpose(0, 1).reshape(zb.shape[1], -1).numpy()[:n]
        res["base"] = args.base
        res["base_latents_corr"] = float(np.corrcoef(probe(base), y[:len(base)])[0, 1])
        res["base_latents_within_corr"] = within_corr(base)
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
