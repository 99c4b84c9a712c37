"""LPM-Bench-mini: ``lpm-rt bench quality --model SRC [--minutes N] --out DIR``.

1. Build held-out scenarios for one held-out character (speaking, listening, conversation,
   one short clip per prompt tag, and a long conversation of N minutes) and render each as
   ground truth.
2. Produce the same scenarios with every system: ``ground-truth`` (the ceiling),
   ``static-reference`` (the reference image repeated: the floor) and each ``--model``,
   driven through the public API (references, prompt, speaker + listener audio).
3. Train the analyzer on the world's own labelled renders (disjoint characters), report its
   accuracy per label on held-out renders, and measure every system's video with it.
4. Write ``bench_quality.json``, ``bench_quality.md`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .analyzer import Analyzer, _corr, identity_features, resize_frames, training_set
from .character import TAG_TO_EXPRESSION, Character
from .conversation import FPS, SR, TAGS, Conversation
from ..media import write_png
from .plots import bar_panels, line_traces
from .render import Scene, render_reference

__all__ = ["main", "build_scenarios", "score", "face_detail", "flicker", "flicker_split", "lip_sync_split", "METRICS"]

log = logging.getLogger(__name__)
LATENT_FRAME = 4          # video frames per latent frame of the LPM presets' VAEs (ModelConfig.vae_temporal)
METRICS = ("lip_sync_corr", "av_offset_ms", "listen_motion_ratio", "false_mouthing_rate",
           "identity_drift", "text_control_acc", "flicker")
_REFS = (("front", "neutral", "global"), ("three_quarter_left", "neutral", "body_view"),
         ("front", "smile", "face_expression"))
_MAX_LAG = 6              # frames searched either side for the A/V offset (250 ms)
_MOUTH_THRESHOLD = 0.3    # measured opening above which a frame counts as "mouthing"


def build_scenarios(seed: int, minutes: float, quick: bool, seconds: float | None = None,
                    voice: str = "synth") -> dict:
    """Held-out scenarios: name -> Conversation, plus the references (list of (img, kind)).
    ``voice``: the world's synthesizer or espeak-ng (real TTS speech, for "responds to speech
    it never saw")."""
    secs = seconds or (8.0 if quick else 30.0)
    tag_secs = max(secs / 4, 2.0) if quick else 6.0
    ch = Character.random(1_000_003 + seed)          # the analyzer trains on other seeds
    scene = Scene.random(2_000_003 + seed)
    common = dict(character=ch, scene=scene, base_yaw=0.0, voice_backend=voice)
    sc = {"speaking": Conversation.generate(seed * 10 + 1, secs, "speaking", "calm", **common),
          "listening": Conversation.generate(seed * 10 + 2, secs, "listening", "calm",
                                             backchannels=False, **common),
          "conversation": Conversation.generate(seed * 10 + 3, secs, "conversation", "calm", **common)}
    for i, tag in enumerate(TAGS):
        sc[f"tag_{tag}"] = Conversation.generate(seed * 10 + 4 + i, tag_secs, "conversation", tag, **common)
    sc["long"] = Conversation.generate(seed * 10 + 9, minutes * 60.0, "conversation", "calm", **common)
    refs = [(render_reference(ch, v, e, 128, scene), kind) for v, e, kind in _REFS]
    return {"scenarios": sc, "references": refs}


def _fit_length(frames: np.ndarray, t: int) -> np.ndarray:
    if len(frames) >= t:
        return frames[:t]
    pad = np.repeat(frames[-1:], t - len(frames), axis=0)
    return np.concatenate([frames, pad])


def _model_system(src: str, refs, sc: dict):
    import lpm_rt

    return avatar_system(lpm_rt.load(src), refs)


def avatar_system(avatar, refs):
    """``run(name, conv) -> frames [T, H, W, 3]``: ``conv`` streamed through a loaded avatar as
    an integrator would (its reference slots filled from ``refs``, both audio tracks, flushed),
    cut or padded to the conversation's frame count."""
    import lpm_rt

    ref_cls = getattr(lpm_rt, "Reference", None)
    slots = getattr(getattr(getattr(avatar, "cfg", None), "stream", None), "reference_slots", len(refs))
    use = [ref_cls(img, kind) if ref_cls else img for img, kind in refs[:max(slots, 1)]]

    def run(name: str, conv: Conversation) -> np.ndarray:
        out = []
        with avatar.open_session(references=use, prompt=conv.prompt, seed=0) as sess:
            sess.push_audio(conv.self_audio, SR, track="speaker")
            sess.push_audio(conv.partner_audio, SR, track="listener")
            sess.flush()
            for fr in sess.frames():
                out.append(fr.image)
        return _fit_length(np.stack(out), conv.num_frames)
    return run


def _base_system(src: str, refs, steps: int):
    """Base LPM (the bidirectional teacher of a ``train base`` directory), sampled offline in
    clip-length windows (:class:`lpm_rt.train.sample.TeacherSampler`)."""
    from ..train.sample import TeacherSampler

    sampler = TeacherSampler(src, steps=steps)

    def run(name: str, conv: Conversation) -> np.ndarray:
        return sampler.render(conv.self_audio, conv.partner_audio, SR, conv.num_frames, conv.prompt, refs)
    return run


def _vae_system(src: str):
    """The ground truth through a model's VAE (encode, then the streaming decode): the ceiling
    that model's latent space leaves for every metric. Encoded a few seconds at a time."""
    import torch

    from ..checkpoint import load_dir
    from ..loader import SHIPPED_DEMO

    model, _ = load_dir(SHIPPED_DEMO if src == "demo" else src)
    vae = model.vae.float().eval()
    T = vae.cfg.vae_temporal
    s = model.cfg.stream

    @torch.no_grad()
    def run(name: str, conv: Conversation) -> np.ndarray:
        from ..model.vae import DecoderCache
        from ..train.data import _frames, _images
        gt = conv.render(128)
        n = -(-len(gt) // T) * T
        x = _fit_length(gt, n)
        cache, out = DecoderCache(), []
        step = 24 * T
        for i in range(0, n, step):
            v = _images(list(x[i:i + step]), s.height, s.width).transpose(0, 1)[None].contiguous()   # (1, 3, t, H, W)
            out.append(_frames(vae.decode(vae.encode(v), cache)[0]))
        return np.concatenate(out)[:len(gt)]
    return run


def _systems(models, refs, scenarios, bases=(), base_steps: int = 16, vaes=()):
    front = refs[0][0]
    systems = {"ground-truth": lambda name, conv: conv.render(128),
               "static-reference": lambda name, conv: np.repeat(front[None], conv.num_frames, axis=0)}
    for src in vaes:
        systems[f"vae:{src}"] = _vae_system(src)
    for src in bases:
        systems[f"base:{src}"] = _base_system(src, refs, base_steps)
    for src in models:
        systems[f"model:{src}"] = _model_system(src, refs, scenarios)
    return systems


def _motion(p: dict) -> np.ndarray:
    """Per-frame head motion (deg/frame) from measured pitch and yaw, lightly smoothed."""
    pose = np.stack([p["pitch"], p["yaw"]], 1).astype(np.float64)
    padded = np.pad(pose, ((1, 1), (0, 0)), mode="edge")            # (T + 2, 2)
    pose = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    d = np.abs(np.diff(pose, axis=0)).sum(1)
    return np.concatenate([d[:1], d])


def _lag(meas: np.ndarray, ref: np.ndarray) -> int | None:
    best, arg = -np.inf, None
    for lag in range(-_MAX_LAG, _MAX_LAG + 1):    # lag > 0: measured mouth trails the audio
        a = meas[max(lag, 0):len(meas) + min(lag, 0)]
        b = ref[max(-lag, 0):len(ref) + min(-lag, 0)]
        c = _corr(a, b)
        if c is not None and c > best:
            best, arg = c, lag
    return arg


def _second_diffs(frames: np.ndarray) -> np.ndarray:
    """[T - 2]: each frame's mean |second temporal difference| (centred on frames 1 .. T-2) at the
    analyzer's size."""
    x = resize_frames(frames)
    return np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).reshape(max(len(x) - 2, 0), -1).mean(1, dtype=np.float64)


def flicker(frames: np.ndarray) -> float:
    """Mean |second temporal difference| of the frames at the analyzer's size (>= 3 frames):
    what changes from frame to frame beyond steady motion."""
    return float(_second_diffs(frames).mean())


def _split(d2: np.ndarray, block: int) -> tuple:
    if len(d2) < block:
        return None, None
    phase = np.arange(1, len(d2) + 1) % block
    edge = (phase == 0) | (phase == block - 1)
    return float(d2[edge].mean()), float(d2[~edge].mean())


def flicker_split(frames: np.ndarray, block: int = LATENT_FRAME) -> tuple:
    """:func:`flicker` split at ``block``-frame boundaries (latent frames; streams start on one):
    the mean over the second differences that span a boundary (centred on a block's first or
    last frame) and over those inside a block. A generator whose latent frames jitter, while its
    decoder draws each one smoothly, flickers at the boundaries only. (None, None) below
    ``block`` + 2 frames."""
    return _split(_second_diffs(frames), block)


def face_detail(frames: np.ndarray, stride: int = 6) -> float:
    """Edge energy of the face: mean |4-neighbour Laplacian| of the luminance over the frames'
    central crop (where the held-out character's face is), at 64x64 so that pixel-level
    texture noise averages out while eyes, brows, mouth and hairline stay. Every ``stride``-th
    frame. Blur (a regression to the mean) lowers it, noise raises it: read it against the
    ground truth's (``detail_ratio``), not alone."""
    x = resize_frames(np.asarray(frames)[::stride], 64) @ np.array([0.299, 0.587, 0.114], np.float32)
    x = x[:, 8:48, 16:48]                                            # (T, 40, 32): face and hair
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def lip_sync_split(meas: np.ndarray, gt: np.ndarray, block: int = LATENT_FRAME) -> tuple:
    """Lip sync split at ``block``-frame boundaries (one latent frame of a Wan-style VAE, which
    turns 4 video frames into one latent frame; streams start on a boundary): the correlation of
    the per-block means, and that of each frame's deviation from its block's mean. A decoder that
    draws one mouth per latent frame scores ~0 on the second however well it does on the first.
    Each is None for a constant series."""
    n = len(gt) // block * block
    m, g = meas[:n].reshape(-1, block), gt[:n].reshape(-1, block)
    mm, gm = m.mean(1, keepdims=True), g.mean(1, keepdims=True)
    return _corr(mm.ravel(), gm.ravel()), _corr((m - mm).ravel(), (g - gm).ravel())


def score(video: dict, preds: dict, sc: dict, refs) -> dict:
    """All metrics for one system. ``video``/``preds``: scenario -> frames / analyzer output."""
    m = {}
    meas = np.concatenate([preds[k]["mouth_open"] for k in ("speaking", "conversation")])
    gt = np.concatenate([sc[k].labels["mouth_open"] for k in ("speaking", "conversation")])
    c = _corr(meas, gt)
    m["lip_sync_corr"] = 0.0 if c is None else c
    m["lip_sync_block"], m["lip_sync_within"] = lip_sync_split(meas, gt)
    lag = _lag(preds["speaking"]["mouth_open"], sc["speaking"].labels["mouth_open"])
    m["av_offset_ms"] = None if lag is None else lag * 1000.0 / FPS
    listen, silent, false = [], [], []
    for k in ("listening", "conversation"):
        who = sc[k].labels["who_speaks"]
        mot = _motion(preds[k])
        # a listener's nod answers the partner's phrase and may land just after it ends:
        # "listening" = partner speech or its 1 s aftermath; "silence" = neither, for > 1 s
        p = (who == "partner").astype(float)
        recent = np.convolve(p, np.ones(FPS), mode="full")[:len(p)] > 0
        listen.append(mot[recent & (who != "self") & (who != "both")])
        silent.append(mot[~recent & (who == "none")])
        false.append(preds[k]["mouth_open"][who == "partner"] > _MOUTH_THRESHOLD)
    eps = 0.05
    ml = np.concatenate(listen).mean() if sum(map(len, listen)) else 0.0
    ms = np.concatenate(silent).mean() if sum(map(len, silent)) else 0.0
    m["listen_motion_ratio"] = float((ml + eps) / (ms + eps))
    f = np.concatenate(false)
    m["false_mouthing_rate"] = float(f.mean()) if len(f) else None
    long = video["long"]
    win = max(min(60 * FPS, len(long) // 4), 1)
    ref_feat = identity_features(np.stack([r[0] for r in refs[:1]])).mean(0)
    d1 = np.linalg.norm(identity_features(long[:win]) - ref_feat, axis=1).mean()
    dn = np.linalg.norm(identity_features(long[-win:]) - ref_feat, axis=1).mean()
    m["identity_drift"] = float(dn - d1)
    m["identity_dist_first"], m["identity_dist_last"] = float(d1), float(dn)
    hits = []
    for tag in TAGS:
        p = preds[f"tag_{tag}"]["expression"][int(0.5 * FPS):]
        hits.append(p == TAG_TO_EXPRESSION[tag])
    m["text_control_acc"] = float(np.concatenate(hits).mean())
    d2 = [_second_diffs(v) for v in video.values() if len(v) >= 3]          # once per video
    m["flicker"] = float(np.mean([d.mean() for d in d2])) if d2 else None
    split = [p for p in (_split(d, LATENT_FRAME) for d in d2) if p[0] is not None]
    m["flicker_boundary"], m["flicker_within"] = ((float(np.mean([p[0] for p in split])),
                                                   float(np.mean([p[1] for p in split]))) if split else (None, None))
    m["detail"] = float(np.mean([face_detail(v) for v in video.values()]))
    return m


def _versions() -> dict:
    import av
    import torch

    import lpm_rt
    return {"lpm_rt": getattr(lpm_rt, "__version__", "?"), "numpy": np.__version__,
            "torch": torch.__version__, "av": av.__version__, "python": platform.python_version()}



def _cell(v) -> str:
    """{"corr": 0.77, "mae": 0.128} -> "corr 0.770, mae 0.128"."""
    if not isinstance(v, dict):
        return str(v)
    return ", ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items())

def _markdown(res: dict) -> str:
    rows = list(res["systems"])
    lines = ["# LPM-Bench-mini", "", f"device: {res['device']} · scenarios: "
             f"{', '.join(f'{k} {v:.1f}s' for k, v in res['scenario_seconds'].items())}", "",
             "| system | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for r in rows:
        vals = [res["systems"][r].get(k) for k in METRICS]
        lines.append(f"| {r} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines += ["", "Face detail (edge energy of the face region, ground truth = 1; blur lowers it, noise "
              "raises it): " + ", ".join(f"{r} {res['details'][r]['detail_ratio']:.2f}" for r in rows)]
    split = lambda r: "/".join("n/a" if res["details"][r].get(k) is None else f"{res['details'][r][k]:.2f}"  # noqa: E731
                               for k in ("lip_sync_block", "lip_sync_within"))
    lines += ["", "Lip sync between / within latent frames (4-frame blocks: correlation of the blocks' "
              "means / of each frame's deviation from its block's mean): " + ", ".join(f"{r} {split(r)}" for r in rows)]
    fsplit = lambda r: "/".join("n/a" if res["details"][r].get(k) is None else f"{res['details'][r][k]:.4f}"  # noqa: E731
                                for k in ("flicker_boundary", "flicker_within"))
    lines += ["", "Flicker across / inside latent frames (second differences centred on a 4-frame block's "
              "first or last frame / on its middle frames): " + ", ".join(f"{r} {fsplit(r)}" for r in rows)]
    lines += ["", "Analyzer accuracy on held-out renders (characters unseen in training):", "",
              "| label | held-out random | held-out scenarios |", "|---|---|---|"]
    for k, v in res["analyzer"]["heldout_random"].items():
        w = res["analyzer"]["heldout_scenarios"].get(k, {})
        lines.append(f"| {k} | {_cell(v)} | {_cell(w)} |")
    lines += ["", "Plots: `metrics.png` (one panel per metric in the order above, one bar per system "
              "in row order, colours green, red, blue, orange...); `mouth_vs_audio.png` (strips: "
              "speaker audio envelope, ground-truth opening, then each system's measured opening, "
              "same colour order)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lpm-rt bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="SRC",
                    help="model under test: a preset name (demo, tiny) or a directory; repeatable")
    ap.add_argument("--base", action="append", default=[], metavar="DIR",
                    help="Base LPM under test: a `train base` directory, sampled offline clip by clip; repeatable")
    ap.add_argument("--vae", action="append", default=[], metavar="SRC",
                    help="the ground truth through this model's VAE (its latent space's ceiling); repeatable")
    ap.add_argument("--base-steps", type=int, default=16, help="ODE steps of the base system (default 16)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="length of the long run in minutes (default 1; 0.25 with --quick)")
    ap.add_argument("--out", type=Path, default=Path("bench_quality"), help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    ap.add_argument("--quick", action="store_true", help="short scenarios and a small analyzer")
    ap.add_argument("--voice", choices=("synth", "espeak"), default="synth",
                    help="speech of the scenarios: the world's synthesizer or espeak-ng (must be installed)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of the speaking/listening/conversation scenarios (default 30; 8 quick)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    minutes = args.minutes if args.minutes is not None else (0.25 if args.quick else 1.0)
    if minutes <= 0:
        ap.error("--minutes must be > 0")
    if args.base_steps < 1:
        ap.error("--base-steps must be >= 1")
    if args.voice == "espeak":
        from .audio import espeak_available
        if not espeak_available():
            ap.error("--voice espeak needs espeak-ng (apt install espeak-ng, or pip install espeakng-loader)")
    res = run_bench(args.model, minutes, args.out, args.seed, args.quick, args.seconds, args.base, args.base_steps,
                    args.voice, args.vae)
    log.info("\n%s", _markdown(res))
    return 0


def run_bench(models, minutes, out, seed=0, quick=False, seconds=None, bases=(), base_steps=16,
              voice="synth", vaes=()) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_scenarios(seed, minutes, quick, seconds, voice)
    sc, refs = data["scenarios"], data["references"]
    n_train = 1200 if quick else 3000
    analyzer = Analyzer.train(n_train, seed=7)
    hf, hl = training_set(300 if quick else 1000, seed=8)
    acc = {"heldout_random": analyzer.evaluate(hf, hl), "train_frames": n_train}
    systems = _systems(models, refs, sc, bases, base_steps, vaes)
    res = {"systems": {}, "details": {}}
    trace = {}
    for name, make in systems.items():
        video, preds = {}, {}
        for key, conv in tqdm(sc.items(), desc=name, unit="scenario"):
            video[key] = make(key, conv)
            preds[key] = analyzer.predict(video[key])
        if name == "ground-truth":
            gl = {k: np.concatenate([np.asarray(sc[s].labels[k]) for s in sc])
                  for k in ("mouth_open", "mouth_shape", "eye_open", "pitch", "yaw", "expression")}
            gl["mouth_open"] = np.where(gl["expression"] == "surprise", np.maximum(gl["mouth_open"], 0.45),
                                        gl["mouth_open"])
            acc["heldout_scenarios"] = analyzer.evaluate(np.concatenate([video[s] for s in sc]), gl)
        m = score(video, preds, sc, refs)
        res["systems"][name] = {k: m[k] for k in METRICS}
        res["details"][name] = {k: v for k, v in m.items() if k not in METRICS}
        gt_detail = res["details"]["ground-truth"]["detail"]
        res["details"][name]["detail_ratio"] = m["detail"] / max(gt_detail, 1e-9)
        trace[name] = preds["speaking"]["mouth_open"]
    res["analyzer"] = acc
    res["scenario_seconds"] = {k: v.seconds for k, v in sc.items()}
    res["device"] = platform.processor() or platform.machine()
    res["versions"] = _versions()
    res["seed"], res["minutes"], res["quick"], res["voice"] = seed, minutes, quick, voice
    res["wall_s"] = time.perf_counter() - t0
    (out / "bench_quality.json").write_text(json.dumps(res, indent=1))
    (out / "bench_quality.md").write_text(_markdown(res))
    vals = np.array([[np.nan if res["systems"][s][k] is None else res["systems"][s][k]
                      for s in res["systems"]] for k in METRICS], np.float64)
    write_png(out / "metrics.png", bar_panels(vals))
    gt = sc["speaking"].labels
    write_png(out / "mouth_vs_audio.png",
              line_traces([gt["self_env"], gt["mouth_open"]] + list(trace.values())))
    return res


if __name__ == "__main__":
    sys.exit(main())
