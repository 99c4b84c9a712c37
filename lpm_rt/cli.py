"""``lpm-rt``: demo, run, compile, plan, bench, train, info. Every command has ``--help``."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _progress(total, desc):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="frame", leave=False, file=sys.stderr,
                disable=not sys.stderr.isatty())


def render(avatar, references, prompt, speaker, listener, out, seed=0, piece_ms=40):
    """Stream audio into a session the way a real-time framework would (``piece_ms`` pieces,
    frames pulled after each push) and write the frames + speaker audio to ``out`` (mp4).
    speaker / listener: (pcm float32, rate) or None. Returns timing figures (dict)."""
    from .media import Mp4Writer

    spec = avatar.spec
    seconds = max(len(a) / r for a, r in (speaker, listener) if a is not None)
    total = int(np.ceil(seconds * spec.fps - 1e-9))
    t_open = time.perf_counter()
    ttff = None
    n = 0
    with avatar.open_session(references=references, prompt=prompt, seed=seed) as sess, \
            Mp4Writer(out, spec.width, spec.height, spec.fps, spec.sample_rate) as mp4, \
            _progress(total, "frames") as bar:
        t_ready = time.perf_counter()

        def drain():
            nonlocal ttff, n
            for f in sess.frames():
                if ttff is None:
                    ttff = time.perf_counter() - t_open
                mp4.add(f.image, f.audio)
                n += 1
                bar.update(1)

        pieces = {k: (a, r, max(1, int(r * piece_ms / 1000))) for k, (a, r) in
                  (("speaker", speaker), ("listener", listener)) if a is not None}
        pos = {k: 0 for k in pieces}
        while any(pos[k] < len(pieces[k][0]) for k in pieces):
            for k, (a, r, step) in pieces.items():
                if pos[k] < len(a):
                    sess.push_audio(a[pos[k]:pos[k] + step], r, track=k)
                    pos[k] += step
            drain()
        sess.flush()
        drain()
    compute = time.perf_counter() - t_open
    return {"frames": n, "video_seconds": n / spec.fps, "compute_seconds": compute,
            "fps": n / compute, "rtf": compute / max(n / spec.fps, 1e-9),
            "time_to_first_frame_s": ttff, "session_open_s": t_ready - t_open}


def _report(avatar, stats, out):
    size = Path(out).stat().st_size
    print(f"model:    {avatar.cfg.name} -- {avatar.source}")
    if not avatar.trained:
        print("          NOTE: untrained weights -- the video is the pipeline's real output, "
              "but it will not look like a face until a trained model is loaded.")
    print(f"output:   {out} ({size / 1e6:.2f} MB, {stats['frames']} frames, "
          f"{avatar.spec.width}x{avatar.spec.height} @ {avatar.spec.fps} fps, H.264 + AAC)")
    print(f"speed:    {stats['fps']:.1f} fps generated, real-time factor {stats['rtf']:.3f} "
          f"(compute s per video s), time to first frame {stats['time_to_first_frame_s']:.3f} s")


def _load(args):
    """The model with its own runtime (an artifact's target device and ops backend), plus the
    command's --threads, --noise and --speaker-guidance / --listener-guidance."""
    import torch

    import lpm_rt
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    avatar = lpm_rt.load(args.model)
    if getattr(args, "noise", None):
        cfg = avatar.model.cfg
        avatar.model.cfg = avatar.cfg = cfg.replace(runtime=cfg.runtime.replace(noise=args.noise))
    gains = {f"{k}_guidance": getattr(args, f"{k}_guidance", None) for k in ("speaker", "listener")}
    gains = {k: v for k, v in gains.items() if v is not None}
    if gains:
        cfg = avatar.model.cfg
        try:
            avatar.model.cfg = avatar.cfg = cfg.replace(stream=cfg.stream.replace(**gains))
        except ValueError as e:
            raise SystemExit(f"lpm-rt: {e}")
    return avatar


def cmd_demo(args):
    from .assets import builtin_conversation
    avatar = _load(args)
    speech, listener = builtin_conversation(args.seconds, seed=args.seed)
    refs = avatar.default_references()          # the built-in character's images (asset loading)
    stats = render(avatar, refs, args.prompt, speech, listener, args.out, seed=args.seed)
    _report(avatar, stats, args.out)
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return 0


def cmd_run(args):
    from .media import read_wav
    avatar = _load(args)
    speaker = read_wav(args.speaker)
    listener = read_wav(args.listener) if args.listener else None
    refs = None
    if args.ref:
        from .session import Reference
        kinds = args.ref_kind or []
        refs = [Reference(p, kinds[i] if i < len(kinds) else ("global" if i == 0 else "body_view"))
                for i, p in enumerate(args.ref)]
    stats = render(avatar, refs, args.prompt, speaker, listener, args.out, seed=args.seed)
    _report(avatar, stats, args.out)
    return 0


def cmd_info(args):
    import torch
    from . import __version__
    from .config import PRESETS
    print(f"lpm-rt {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    for mod in ("triton", "av", "numba", "safetensors", "onnx", "onnxruntime", "cuda.bindings", "cupy"):
        try:
            m = importlib.import_module(mod)
            print(f"  {mod:14s} {getattr(m, '__version__', 'present')}")
        except Exception as e:  # optional extras: say why they are unavailable
            print(f"  {mod:14s} unavailable ({type(e).__name__})")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device: {p.name} sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB -> "
              "h100 artifacts need sm_90; orin artifacts sm_87; cpu target runs anywhere")
    else:
        print(f"device: CPU only ({torch.get_num_threads()} threads) -> runs the reference path "
              "(presets, model dirs, cpu-target artifacts); GPU artifacts are refused")
    print("presets: " + ", ".join(f"{n} ({p.stream.width}x{p.stream.height}, {p.model.num_layers} layers, "
                                  f"dim {p.model.dim})" for n, p in PRESETS.items()))
    if args.path:
        p = Path(args.path)
        if (p / "manifest.json").is_file():
            from .artifact import describe
            print(json.dumps(describe(p), indent=2))
        else:
            from .checkpoint import load_dir
            model, meta = load_dir(p)
            print(f"model dir {p}: preset shape {model.cfg.name}, trained={meta.get('trained', True)}")
    return 0


# Subcommands implemented by other packages: name -> (module, function, help).
_ROUTED = {
    "compile": ("lpm_compile", "main", "compile a model into a verified per-target artifact"),
    "plan": ("lpm_compile.plan", "main", "roofline plan: FLOPs, bytes, fps and memory per target"),
    "train": ("lpm_rt.train", "main", "train the base model / distill the online model"),
}
_BENCH = {
    "kernels": ("lpm_rt.benchmark.kernels", "main", "kernel benchmarks (GPU for timings)"),
    "quality": ("lpm_rt.world.bench", "main", "LPM-Bench-mini quality benchmark"),
    "stream": ("lpm_rt.benchmark.stream", "main", "end-to-end streaming benchmark (RTF, latency, memory)"),
}


def _route(table, name, argv):
    mod, fn, _ = table[name]
    try:
        entry = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        print(f"lpm-rt: '{name}' is not available in this installation ({e})", file=sys.stderr)
        return 2
    return int(entry(argv) or 0)


def build_parser():
    p = argparse.ArgumentParser(prog="lpm-rt", description="Streaming runtime for LPM-class conversational avatars.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--model", default="demo", help="preset name, 'demo', model dir or artifact dir (default: demo)")
        sp.add_argument("--prompt", default="", help="prompt tags, e.g. 'smile calm'")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
        sp.add_argument("--noise", choices=("fresh", "fixed"), default=None,
                        help="noise per chunk: 'fresh' draws (default) or one 'fixed' draw per session, which "
                             "keeps details from changing between chunks (steadier video) but loses the shipped "
                             "demo model's lip sync (it was distilled on fresh draws)")
        sp.add_argument("--speaker-guidance", type=float, default=None, metavar="G",
                        help="audio guidance on the avatar's own speech: its audio-driven motion (the mouth) "
                             "scaled by G against silence's (default: the model's setting; 1: off)")
        sp.add_argument("--listener-guidance", type=float, default=None, metavar="G",
                        help="the same on the user's speech (default: the model's setting)")

    d = sub.add_parser("demo", help="the embedded default: built-in character and speech -> mp4")
    common(d)
    d.add_argument("--seconds", type=float, default=8.0)
    d.add_argument("--out", default="demo.mp4")
    d.add_argument("--json", help="also write the timing figures as JSON here")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("run", help="your references and WAV files -> mp4")
    common(r)
    r.add_argument("--ref", action="append", help="reference image (repeatable); default: the model's character")
    r.add_argument("--ref-kind", action="append", choices=["global", "body_view", "face_expression"],
                   help="kind of each --ref, in order")
    r.add_argument("--speaker", required=True, help="WAV: the avatar's own speech")
    r.add_argument("--listener", help="WAV: the user's speech (the avatar listens)")
    r.add_argument("--out", required=True)
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("info", help="versions, devices, what runs where")
    i.add_argument("path", nargs="?", help="a model or artifact directory to describe")
    i.set_defaults(fn=cmd_info)

    for name, (_, _, h) in _ROUTED.items():
        sub.add_parser(name, help=h, add_help=False)
    b = sub.add_parser("bench", help="benchmarks: " + ", ".join(_BENCH))
    b.add_argument("which", choices=list(_BENCH))
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _ROUTED:
        return _route(_ROUTED, argv[0], argv[1:])
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in _BENCH:
        return _route(_BENCH, argv[1], argv[2:])
    args = build_parser().parse_args(argv)
    from .errors import LPMError
    try:
        return args.fn(args)
    except LPMError as e:
        print(f"lpm-rt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
