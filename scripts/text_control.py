"""Does a model's expression follow the prompt, the face-expression reference, or neither?

LPM-Bench-mini's text control streams each tag scenario (calm, smile, sad, surprised) with the
same three references, the third a smiling face, and asks the analyzer which expression it
sees. Training gives the face-expression reference that matches the prompt, so a model could
copy its expression from that reference instead of reading the prompt. This streams every tag
scenario with each face-expression reference in turn (and with the one matching the tag) and
prints, per reference, the accuracy and what the analyzer saw per tag: a model that reads the
prompt scores the same whatever the reference; one that copies the reference follows it.

    python scripts/text_control.py [MODEL ...] [--out FILE]     (default: demo; ~1.5 min per model)
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import lpm_rt
from lpm_rt.world.analyzer import Analyzer
from lpm_rt.world.bench import _REFS, build_scenarios
from lpm_rt.world.character import EXPRESSIONS, TAG_TO_EXPRESSION, Character
from lpm_rt.world.conversation import SR, TAGS
from lpm_rt.world.render import Scene, render_reference


def measure(src: str, analyzer: Analyzer, scenarios: dict, seed: int = 0) -> dict:
    ch, scene = Character.random(1_000_003 + seed), Scene.random(2_000_003 + seed)   # the bench's character
    avatar = lpm_rt.load(src)

    def refs(expr):
        return [lpm_rt.Reference(render_reference(ch, view, expr if kind == "face_expression" else e, 128, scene),
                                 kind) for view, e, kind in _REFS]

    out = {}
    for ref_expr in (*EXPRESSIONS, "match"):
        per_tag = {}
        for tag in TAGS:
            conv, want = scenarios[f"tag_{tag}"], TAG_TO_EXPRESSION[tag]
            with avatar.open_session(references=refs(want if ref_expr == "match" else ref_expr),
                                     prompt=conv.prompt, seed=0) as sess:
                sess.push_audio(conv.self_audio, SR, track="speaker")
                sess.push_audio(conv.partner_audio, SR, track="listener")
                sess.flush()
                frames = np.stack([f.image for f in sess.frames()])
            seen = analyzer.predict(frames)["expression"][12:]          # after the 0.5 s fade-in
            kinds, counts = np.unique(seen, return_counts=True)
            per_tag[tag] = {"acc": float((seen == want).mean()),
                            "seen": {str(k): int(c) for k, c in zip(kinds, counts)}}
        out[ref_expr] = {"acc": float(np.mean([v["acc"] for v in per_tag.values()])), "tags": per_tag}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["demo"], help="model directories or presets (default: demo)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    scenarios = build_scenarios(0, 0.1, False)["scenarios"]
    analyzer = Analyzer.train(3000, seed=7)                             # as the bench trains it
    res = {}
    for src in args.models:
        res[src] = measure(src, analyzer, scenarios)
        for ref_expr, r in res[src].items():
            print(f"{src}: face-expression reference {ref_expr}: accuracy {r['acc']:.3f}  " +
                  "  ".join(f"{t} {v['seen']}" for t, v in r["tags"].items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
