"""Where does the online stream lose the mouth? Lip sync after each stage of ``OnlineLPM.step``.

Streams LPM-Bench-mini's speaking scenario and keeps the x0 of every backbone step and of the
refiner. Each is scored two ways against the world's mouth-opening labels:

* latents: a :class:`lpm_rt.train.mouth.MouthProbe` (fitted on encoder latents of six other
  characters, read at the scenario's mouth positions; a full-frame probe does not transfer
  between characters) per latent frame, at lags 0-2 latent frames (x0 later than the labels);
* pixels: the latents decoded by the model's VAE, measured by the world's analyzer, per video
  frame, at lags 0, 2 and 4 frames.
* amplitude, both ways: the std of the reading over the std of the true opening (correlation
  is scale-free: a faint but well-timed mouth still correlates).

The ground truth's encoder latents give both ceilings. Comparing the rows says which stage (a
backbone step, the refiner, the decoder) drops the lip sync.

    python scripts/stream_stages.py --model demo [--voice espeak] [--out stages.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import lpm_rt
from lpm_rt.train.mouth import MouthProbe, latent_opening
from lpm_rt.world import Character, Conversation, Scene
from lpm_rt.world.analyzer import Analyzer
from lpm_rt.world.bench import SR, build_scenarios
from lpm_rt.world.render import landmarks, mouth_opening, states_from_labels


def _mouth(conv, n: int, size: int) -> torch.Tensor:
    """[1, n, 3]: the mouth's (x, y) pixels and opening per frame, from the world's labels."""
    st = states_from_labels({k: np.asarray(v)[:n] for k, v in conv.labels.items()})
    return torch.tensor([[(*landmarks(conv.character, x, size, size)["mouth"], mouth_opening(x)) for x in st]],
                        dtype=torch.float32)


def _encode(vae, frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous().float()[None] / 127.5 - 1.0
    with torch.no_grad():
        return vae.encode(x)


def _lags(pred: np.ndarray, ref: np.ndarray, lags) -> dict:
    m = min(len(pred), len(ref))
    return {str(k): float(np.corrcoef(pred[k:m], ref[:m - k])[0, 1]) for k in lags}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", help="model to stream (as lpm_rt.load takes it)")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of the speaking scenario")
    ap.add_argument("--voice", choices=("synth", "espeak"), default="synth",
                    help="speech of the scenario (and of the probe's fitting clips): the world's "
                         "synthesizer or espeak-ng")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    avatar = lpm_rt.load(args.model)
    model, vae, size = avatar.model, avatar.model.vae.float().eval(), avatar.spec.height
    T = model.cfg.model.vae_temporal
    Z, M = [], []
    for seed in range(6):                                   # the probe: other characters and scenes
        c = Conversation.generate(100 + seed, args.seconds, "speaking", "calm", voice_backend=args.voice,
                                  character=Character.random(1_000_003 + seed), scene=Scene.random(2_000_003 + seed))
        n = (c.num_frames // T) * T
        Z.append(_encode(vae, c.render(size)[:n]))
        M.append(_mouth(c, n, size))
    probe = MouthProbe((size, size), T).fit(Z, M)

    data = build_scenarios(0, 0.1, True, args.seconds, voice=args.voice)
    conv, refs = data["scenarios"]["speaking"], data["references"]
    rec, chunk_pass = {}, model._chunk_pass

    def keep(net, attn, x, sigma, context, audio):          # every pass's x0, by network and level
        v = chunk_pass(net, attn, x, sigma, context, audio)
        name = "refiner" if net is model.refiner else "backbone"
        rec.setdefault(f"{name}@{float(sigma):.2f}", []).append((x - sigma * v).float().clone())
        return v

    model._chunk_pass = keep
    try:
        with avatar.open_session(references=[lpm_rt.Reference(i, k) for i, k in refs[:3]], prompt=conv.prompt,
                                 seed=0) as sess:
            sess.push_audio(conv.self_audio, SR, track="speaker")
            sess.push_audio(conv.partner_audio, SR, track="listener")
            sess.flush()
            for _ in sess.frames():
                pass
    finally:
        model._chunk_pass = chunk_pass
    n = conv.num_frames // T
    mouth = _mouth(conv, n * T, size)
    per_latent = latent_opening(mouth, T)[0].numpy()
    labels = np.asarray(conv.labels["mouth_open"][:n * T])
    analyzer = Analyzer.train(n=1500, seed=0)

    def score(z):
        z = z[:, :, :n]
        with torch.no_grad():
            v = vae.decode(z)
        frames = ((v[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        read = probe.read(z, mouth[:, :z.shape[2] * T])[0].numpy()
        seen = analyzer.predict(frames)["mouth_open"]
        # amplitude: correlation is scale-free, so a faint but well-timed mouth scores high; the
        # std of the reading over the true opening's std says how far the mouth actually moves
        return {"latent_probe_by_lag": _lags(read, per_latent, range(3)),
                "pixels_by_lag": _lags(seen, labels, (0, 2, 4)),
                "latent_amplitude": float(np.std(read) / max(np.std(per_latent), 1e-9)),
                "pixel_amplitude": float(np.std(seen) / max(np.std(labels), 1e-9))}

    res = {"model": args.model, "seconds": args.seconds, "voice": args.voice, "ground_truth": score(_encode(vae, conv.render(size)[:n * T]))}
    res.update({k: score(torch.cat(v, 2)) for k, v in rec.items()})
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"{k:16s} latents {json.dumps({a: round(b, 3) for a, b in v['latent_probe_by_lag'].items()})}"
                  f"  pixels {json.dumps({a: round(b, 3) for a, b in v['pixels_by_lag'].items()})}"
                  f"  amplitude latents {v['latent_amplitude']:.2f} pixels {v['pixel_amplitude']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
