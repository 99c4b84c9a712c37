"""Where a model's face loses its detail: the face's edge energy (``lpm_rt.world.bench.face_detail``,
ground truth = 1) of LPM-Bench-mini's held-out conversation scenario, seen through each stage.

* ``--vae SRC``: the ground truth encoded and decoded by SRC's VAE (the latent space's ceiling);
* ``--model SRC``: streamed through the public API (references, prompt, both audio tracks);
* ``--teacher DIR``: a ``train base`` teacher sampled offline (``--steps`` Euler steps, CFG 2);
  ``--default-character`` samples it on the character it saw in training instead.

Blur lowers the figure and pixel noise raises it, so each row also gives flicker (mean |second
temporal difference|, the bench's) and the mean error against the ground truth (both at the
analyzer's 128x128); ``--png`` writes one frame per row next to the ground truth's (models of
the demo's 128x128 only).

    python scripts/face_detail.py [--vae SRC] [--model SRC] [--teacher DIR] [--seconds 4] [--out F] [--png F]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lpm_rt.world.analyzer import resize_frames
from lpm_rt.world.bench import _REFS, _model_system, _vae_system, build_scenarios, face_detail, flicker
from lpm_rt.world.conversation import SR, Conversation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", action="append", default=[], metavar="SRC", help="VAE round trip of SRC (repeatable)")
    ap.add_argument("--model", action="append", default=[], metavar="SRC", help="online model (repeatable)")
    ap.add_argument("--teacher", action="append", default=[], metavar="DIR", help="train base teacher (repeatable)")
    ap.add_argument("--steps", type=int, default=8, help="Euler steps of the teacher's sampler (default 8)")
    ap.add_argument("--default-character", action="store_true",
                    help="the shipped default character (seen in training) instead of the bench's held-out one")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the conversation (default 4)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    ap.add_argument("--png", default=None, help="write frame 40 of every row (ground truth first) here")
    args = ap.parse_args(argv)

    data = build_scenarios(0, 0.1, False, args.seconds)
    conv, refs = data["scenarios"]["conversation"], data["references"]
    if args.default_character:
        from lpm_rt.assets import DEFAULT_CHARACTER_SEED
        from lpm_rt.world.character import Character
        from lpm_rt.world.render import render_reference
        ch = Character.random(DEFAULT_CHARACTER_SEED)
        conv = Conversation.generate(4242, args.seconds, "conversation", "calm", character=ch, voice_backend="synth")
        refs = [(render_reference(ch, view, expr, 128, conv.scene), kind) for view, expr, kind in _REFS]
    gt = conv.render(128)
    base = face_detail(gt)
    rows, frames = {"ground-truth": gt}, {}

    def teacher(src):
        from lpm_rt.train.sample import TeacherSampler
        sampler = TeacherSampler(src, steps=args.steps)
        return lambda name, c: sampler.render(c.self_audio, c.partner_audio, SR, c.num_frames, c.prompt, refs)

    for kind, srcs, make in (("vae", args.vae, _vae_system), ("model", args.model, lambda s: _model_system(s, refs, {})),
                             ("teacher", args.teacher, teacher)):
        for src in srcs:
            rows[f"{kind}:{src}"] = make(src)("conversation", conv)
    res = {}
    for name, v in rows.items():
        v = v[:len(gt)]
        res[name] = {"detail_ratio": face_detail(v) / base, "flicker": flicker(v),
                     "abs_err_255": 255 * float(np.abs(resize_frames(v) - resize_frames(gt[:len(v)])).mean())}
        frames[name] = v[min(40, len(v) - 1)]
        print(f"{name}: detail {res[name]['detail_ratio']:.3f}, flicker {res[name]['flicker']:.4f}, "
              f"error {res[name]['abs_err_255']:.2f} /255", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"character": "default" if args.default_character else "held-out (bench seed 0)",
                       "seconds": args.seconds, "teacher_steps": args.steps, "rows": res}, f, indent=1)
    if args.png:
        from lpm_rt.media import write_png
        write_png(args.png, np.concatenate(list(frames.values()), 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
