"""Dataset writer and reader for the synthetic world.

Layout written by ``python -m lpm_rt.world.dataset --out DIR --clips N --seconds S --seed K``::

    DIR/index.json                          format, fps, sample rate, size, one entry per clip
    DIR/shard-0000/clip-000000/video.mp4    H.264 video (+ AAC mix of both parties, for viewing)
                              self.wav      16 kHz int16: the rendered character's speech
                              partner.wav   16 kHz int16: the other party
                              labels.json   per-frame labels, column-wise ({key: [T values]})
                              meta.json     character, scene, prompt, mode, speech segments
                              ref_<view>_<expression>.png   reference images

:class:`WorldDataset` reads it back: PyAV decode on the CPU (the default, what CI runs) or
NVIDIA DALI GPU decode when ``nvidia.dali`` is importable and a GPU is present.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .character import Character
from .conversation import FPS, SR, Conversation
from ..media import read_image, read_video, read_wav, write_mp4, write_png, write_wav
from .render import render_reference

__all__ = ["REFERENCES", "write_clip", "write_dataset", "WorldDataset", "main"]

log = logging.getLogger(__name__)
FORMAT = "lpm-world-v1"
# (view, expression, kind): the global reference, body views, face expressions (RefKind names)
REFERENCES = (("front", "neutral", "global"),
              ("three_quarter_left", "neutral", "body_view"),
              ("three_quarter_right", "neutral", "body_view"),
              ("profile", "neutral", "body_view"),
              ("front", "smile", "face_expression"),
              ("front", "surprise", "face_expression"),
              ("front", "sad", "face_expression"))


def clip_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def write_clip(conv: Conversation, clip_dir: Path, size: int = 128) -> dict:
    """Render ``conv`` and write one clip directory; returns its index entry."""
    clip_dir.mkdir(parents=True, exist_ok=True)
    video = conv.render(size)
    write_mp4(clip_dir / "video.mp4", video, fps=FPS, audio=np.clip(conv.self_audio + conv.partner_audio,
                                                                       -1, 1), sample_rate=SR)
    write_wav(clip_dir / "self.wav", conv.self_audio, SR)
    write_wav(clip_dir / "partner.wav", conv.partner_audio, SR)
    (clip_dir / "labels.json").write_text(json.dumps(conv.labels_json()))
    refs = []
    for view, expr, kind in REFERENCES:
        name = f"ref_{view}_{expr}.png"
        write_png(clip_dir / name, render_reference(conv.character, view, expr, size, conv.scene))
        refs.append({"file": name, "view": view, "expression": expr, "kind": kind})
    meta = {"seed": conv.seed, "seconds": conv.seconds, "mode": conv.mode, "prompt": conv.prompt,
            "character": conv.character.to_dict(),
            "scene": {f.name: getattr(conv.scene, f.name) for f in dataclasses.fields(conv.scene)
                      if not f.name.startswith("_")},
            "segments": [list(s) for s in conv.segments], "references": refs}
    (clip_dir / "meta.json").write_text(json.dumps(meta))
    return {"frames": int(len(video)), "seconds": conv.seconds, "seed": conv.seed, "mode": conv.mode,
            "prompt": conv.prompt, "character_seed": conv.character.seed, "references": refs}


def write_dataset(out: Path, clips: int, seconds: float, seed: int, size: int = 128,
                  shard_size: int = 100, voice_backend: str = "synth", progress: bool = True) -> dict:
    """Write ``clips`` conversations of ``seconds`` each under ``out``; returns the index."""
    from tqdm import tqdm

    if size % 16:
        raise ValueError(f"size {size} must be a multiple of 16")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in tqdm(range(clips), desc="world clips", unit="clip", disable=not progress):
        cs = clip_seed(seed, i)
        rng = np.random.default_rng(cs)
        mode = str(rng.choice(["conversation", "speaking", "listening"], p=[0.6, 0.2, 0.2]))
        conv = Conversation.generate(cs, seconds, mode=mode, voice_backend=voice_backend)
        rel = Path(f"shard-{i // shard_size:04d}") / f"clip-{i:06d}"
        entry = write_clip(conv, out / rel, size)
        entries.append({"id": i, "dir": str(rel), **entry})
    index = {"format": FORMAT, "fps": FPS, "sample_rate": SR, "size": [size, size], "seed": seed,
             "clips": entries}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


def _dali_usable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class WorldDataset:
    """Random access to a written world dataset.

    ``backend``: ``pyav`` (CPU decode, default), ``dali`` (NVIDIA DALI GPU decode; needs
    ``nvidia.dali`` and a GPU) or ``auto`` (DALI when usable, else PyAV). Items are dicts:
    ``video [T, H, W, 3] uint8`` (numpy; a CUDA tensor with DALI), ``self_audio``,
    ``partner_audio`` (float32 at 16 kHz), ``labels`` (key -> numpy array), ``references``
    (list of (image, kind) pairs), ``meta``.
    """

    def __init__(self, root, backend: str = "pyav"):
        self.root = Path(root)
        self.index = json.loads((self.root / "index.json").read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{root}: not a {FORMAT} dataset")
        if backend not in ("pyav", "dali", "auto"):
            raise ValueError("backend must be pyav, dali or auto")
        if backend == "auto":
            backend = "dali" if _dali_usable() else "pyav"
        if backend == "dali" and not _dali_usable():
            raise RuntimeError("backend='dali' needs nvidia.dali and a CUDA GPU")
        self.backend = backend

    def __len__(self) -> int:
        return len(self.index["clips"])

    def clip_dir(self, i: int) -> Path:
        return self.root / self.index["clips"][i]["dir"]

    def read_video(self, i: int):
        path = self.clip_dir(i) / "video.mp4"
        if self.backend == "dali":
            return _dali_read(path, self.index["clips"][i]["frames"])
        return read_video(path)

    def __getitem__(self, i: int) -> dict:
        d = self.clip_dir(i)
        labels = {k: np.asarray(v) for k, v in json.loads((d / "labels.json").read_text()).items()}
        meta = json.loads((d / "meta.json").read_text())
        self_audio, _ = read_wav(d / "self.wav")
        partner_audio, _ = read_wav(d / "partner.wav")
        refs = [(read_image(d / r["file"]), r["kind"]) for r in meta["references"]]
        return {"video": self.read_video(i), "self_audio": self_audio, "partner_audio": partner_audio,
                "labels": labels, "references": refs, "meta": meta,
                "character": Character.from_dict(meta["character"])}


def _dali_read(path: Path, frames: int):
    """Decode a whole clip on the GPU with a one-shot DALI pipeline: ``[T, H, W, 3]`` uint8 CUDA tensor."""
    import torch
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import feed_ndarray

    @pipeline_def(batch_size=1, num_threads=2, device_id=torch.cuda.current_device())
    def pipe():
        return fn.readers.video(device="gpu", filenames=[str(path)], sequence_length=frames,
                                random_shuffle=False, name="reader")

    p = pipe()
    p.build()
    (seq,) = p.run()
    t = seq.as_tensor()
    out = torch.empty(tuple(t.shape()), dtype=torch.uint8, device="cuda")
    feed_ndarray(t, out)
    return out[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lpm_rt.world.dataset",
                                 description="Write a sharded dataset of synthetic two-party "
                                             "conversations (mp4 + wav + per-frame labels + references).")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--clips", type=int, default=8, help="number of clips (default 8)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per clip (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    ap.add_argument("--size", type=int, default=128, help="frame height = width, multiple of 16")
    ap.add_argument("--shard-size", type=int, default=100, help="clips per shard directory")
    ap.add_argument("--voice", choices=("synth", "espeak", "auto"), default="synth",
                    help="speech source: numpy synthesizer, espeak-ng, or espeak-ng when installed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.clips < 1 or args.seconds <= 0:
        ap.error("--clips must be >= 1 and --seconds > 0")
    index = write_dataset(args.out, args.clips, args.seconds, args.seed, args.size, args.shard_size,
                          args.voice)
    log.info("wrote %d clips (%d frames) to %s", len(index["clips"]),
             sum(c["frames"] for c in index["clips"]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
