"""The streaming API (DESIGN section 6): :class:`Avatar` (a loaded model) and :class:`Session`.

Timeline: the video timeline is covered by the pushed audio of either track (a track with
nothing pushed is silence); a chunk of ``frames_per_chunk`` frames is generated as soon as the
audio covers it. ``flush()`` ends the input: the tail is padded to a whole chunk and ``frames()``
yields exactly ``ceil(seconds * fps)`` frames in all.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import LPMConfig, RefKind
from .errors import InvalidAudio, InvalidReference, LPMError
from .model.audio import AUDIO_RATE, MAX_RATE, MEL_HOP, MEL_WIN, MIN_RATE, Resampler
from .model.online import OnlineLPM

__all__ = ["OutputSpec", "Frame", "Reference", "Avatar", "Session"]

TRACKS = ("speaker", "listener")


@dataclass(frozen=True)
class OutputSpec:
    fps: int
    width: int
    height: int
    sample_rate: int


@dataclass(frozen=True)
class Frame:
    index: int
    pts: float              # seconds
    image: np.ndarray       # [H, W, 3] uint8 RGB
    audio: np.ndarray       # the speaker PCM played with this frame, float32 at spec.sample_rate


@dataclass(frozen=True)
class Reference:
    """An identity reference: an image (HxWx3 uint8 array or a path) and its kind."""
    image: object
    kind: str = "global"


def _kind(name) -> RefKind:
    try:
        return name if isinstance(name, RefKind) else RefKind[str(name).upper()]
    except KeyError:
        raise InvalidReference(f"unknown reference kind {name!r}; use one of "
                               f"{', '.join(k.name.lower() for k in RefKind)}") from None


def _read_reference(path) -> np.ndarray:
    import av
    from .media import read_image
    try:
        return read_image(os.fspath(path))
    except (OSError, av.error.FFmpegError, StopIteration) as e:
        raise InvalidReference(f"cannot read reference image {path!s}: {e}") from None


def _as_image(img) -> np.ndarray:
    if isinstance(img, (str, os.PathLike)):
        return _read_reference(img)
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise InvalidReference(f"reference must be HxWx3 uint8 (H, W >= 8), got {a.dtype} {a.shape}")
    return a


def image_to_tensor(img: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Center-crop to the aspect ratio, resize (antialiased): [1, 3, height, width] in [-1, 1]."""
    H, W, _ = img.shape
    if H * width > W * height:                       # too tall
        ch = W * height // width
        img = img[(H - ch) // 2:(H - ch) // 2 + ch]
    else:
        cw = H * width // height
        img = img[:, (W - cw) // 2:(W - cw) // 2 + cw]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


class _Track:
    """One audio track at the model rate: resampled pushes, consumption by chunks."""

    def __init__(self):
        self.resampler = None
        self.pending = np.zeros(0, np.float32)   # samples not yet consumed by a chunk
        self.context = np.zeros(0, np.float32)   # samples just before ``pending`` (left context)
        self.total = 0                           # samples pushed (model rate), this segment

    def push(self, x: np.ndarray, rate: int) -> None:
        if self.resampler is None or self.resampler.rate_in != rate:
            if self.resampler is not None:
                self._append(self.resampler.flush())
            self.resampler = Resampler(rate, AUDIO_RATE)
        self._append(self.resampler.push(x))

    def _append(self, y):
        self.pending = np.concatenate([self.pending, y])
        self.total += len(y)

    def flush(self):
        if self.resampler is not None:
            self._append(self.resampler.flush())
            self.resampler = None

    def take(self, n: int, context: int) -> np.ndarray:
        """Consume n samples (zero-padded if short), returned with ``context`` samples before them."""
        got = self.pending[:n]
        chunk = np.concatenate([got, np.zeros(n - len(got), np.float32)])
        ctx = np.concatenate([np.zeros(max(context - len(self.context), 0), np.float32), self.context])[-context:]
        self.pending = self.pending[n:]
        out = np.concatenate([ctx, chunk])
        self.context = out[-context:]
        return out


class Avatar:
    """A loaded model: ``spec``, ``open_session``. Pools of KV pages are shared by its sessions."""

    def __init__(self, model: OnlineLPM, trained: bool = True, source: str = ""):
        self.model = model.eval()
        self.cfg: LPMConfig = model.cfg
        self.trained, self.source = trained, source
        s = self.cfg.stream
        self.spec = OutputSpec(fps=s.fps, width=s.width, height=s.height, sample_rate=s.sample_rate)
        if model.pools is None:
            model.make_pools()
        self._default_refs = None
        Resampler(16000).push(np.zeros(256, np.float32))   # compile the numba kernel at load, not in a stream

    def default_references(self):
        """The model's built-in character (used when a session is opened without references)."""
        if self._default_refs is None:
            from .assets import default_character
            self._default_refs = default_character(self.spec.height, self.spec.width)
        return self._default_refs

    def open_session(self, references=None, prompt="", seed: int = 0) -> "Session":
        """references: images (HxWx3 uint8 or paths) or :class:`Reference`; None: the built-in
        character. prompt: tags from the built-in vocabulary (str), or precomputed text
        embeddings [L, text_dim] (e.g. umT5 outputs for Wan checkpoints)."""
        return Session(self, references, prompt, seed)

    def __repr__(self):
        return f"Avatar({self.cfg.name!r}, {self.spec}, trained={self.trained}, source={self.source!r})"


@torch.no_grad()
def reference_latents(model, images) -> torch.Tensor:
    """HxWx3 uint8 reference images -> the model's VAE latents [1, z, R, h, w] (R may be 0)."""
    s, m = model.cfg.stream, model.cfg.model
    if not images:
        return torch.zeros(1, m.vae_z_dim, 0, s.latent_h, s.latent_w)
    w = model.vae.dec_out.weight
    return torch.cat([model.vae.encode_image(image_to_tensor(im, s.height, s.width).to(w.device, w.dtype))
                      for im in images], 2)


class Session:
    """One stream. Not thread-safe: drive it from one thread (or use :mod:`lpm_rt.aio`)."""

    def __init__(self, avatar: Avatar, references, prompt: str, seed: int):
        self.avatar = avatar
        cfg = avatar.cfg
        s, m = cfg.stream, cfg.model
        refs = avatar.default_references() if references is None else references
        if isinstance(refs, (np.ndarray, str, os.PathLike, Reference)):
            refs = [refs]
        refs = list(refs)
        if len(refs) > s.reference_slots:
            raise InvalidReference(f"{len(refs)} references given; this model has {s.reference_slots} slots")
        imgs, kinds = [], []
        for i, r in enumerate(refs):
            if isinstance(r, Reference):
                imgs.append(_as_image(r.image))
                kinds.append(_kind(r.kind))
            else:
                imgs.append(_as_image(r))
                kinds.append(RefKind.GLOBAL if i == 0 else RefKind.BODY_VIEW)
        if not isinstance(prompt, str):
            p = np.asarray(prompt)
            if p.ndim != 2 or p.shape[1] != m.text_dim or not np.isfinite(p).all():
                raise LPMError(f"prompt embeddings must be finite [L, {m.text_dim}], got shape {p.shape}")
        model = avatar.model
        lat = reference_latents(model, imgs)
        self._state = model.open_stream(lat, torch.tensor([int(k) for k in kinds]), prompt, int(seed))
        self._tracks = {t: _Track() for t in TRACKS}
        self._chunk_samples = s.frames_per_chunk * (AUDIO_RATE // s.fps)
        self._ctx_samples = (MEL_WIN - MEL_HOP) + m.audio_context * m.vae_temporal * (AUDIO_RATE // s.fps)
        self._seg_start = 0          # frame index where the current segment starts
        self._next_frame = 0         # index of the next frame to generate
        self._emitted = 0            # frames yielded so far
        self._end_frame = None       # set by flush(): last frame index (exclusive) of the segment
        self._ready = []             # generated frames not yet yielded
        self.closed = False

    # ---- input --------------------------------------------------------------------------------
    def push_audio(self, pcm, sample_rate: int, track: str = "speaker") -> None:
        """Append audio to a track. pcm: 1-D float32 in [-1, 1] or int16; any rate 8-192 kHz."""
        self._check_open()
        if track not in TRACKS:
            raise InvalidAudio(f"track must be one of {TRACKS}, got {track!r}")
        if not isinstance(sample_rate, (int, np.integer)) or not MIN_RATE <= sample_rate <= MAX_RATE:
            raise InvalidAudio(f"sample_rate must be an int in [{MIN_RATE}, {MAX_RATE}] Hz, got {sample_rate!r}")
        a = pcm.numpy() if isinstance(pcm, torch.Tensor) else np.asarray(pcm)
        if a.ndim != 1:
            raise InvalidAudio(f"pcm must be 1-D (mono), got shape {a.shape}")
        if a.dtype == np.int16:
            a = a.astype(np.float32) / 32768.0
        elif a.dtype in (np.float32, np.float64):
            if not np.isfinite(a).all():
                raise InvalidAudio("pcm contains NaN or inf")
            if a.size and np.abs(a).max() > 1.0 + 1e-6:
                raise InvalidAudio("float pcm must lie in [-1, 1]")
            a = a.astype(np.float32)
        else:
            raise InvalidAudio(f"pcm dtype must be float32 or int16, got {a.dtype}")
        if self._end_frame is not None:
            self._start_segment()
        self._tracks[track].push(a, int(sample_rate))

    def flush(self) -> None:
        """End of input: pad the tail; ``frames()`` then yields the rest of the segment."""
        self._check_open()
        for t in self._tracks.values():
            t.flush()
        covered = max(t.total for t in self._tracks.values())
        self._end_frame = self._seg_start + math.ceil(covered * self.avatar.spec.fps / AUDIO_RATE - 1e-9)

    def interrupt(self) -> float:
        """Drop queued speaker audio (not yet turned into frames). Returns the playback position
        in seconds: the pts at which the next frame will play."""
        self._check_open()
        spk = self._tracks["speaker"]
        if spk.resampler is not None:
            spk.resampler = None
        spk.total -= len(spk.pending)
        spk.pending = np.zeros(0, np.float32)
        return self._emitted / self.avatar.spec.fps

    def _start_segment(self):
        """After a flush, new audio continues the stream at the next chunk boundary."""
        self._seg_start = self._next_frame
        self._end_frame = None
        for t in self._tracks.values():
            t.total = len(t.pending)

    # ---- output -------------------------------------------------------------------------------
    def _covered_frames(self) -> int:
        """Frames (from the segment start) the pushed audio covers."""
        covered = max(t.total for t in self._tracks.values())
        return covered * self.avatar.spec.fps // AUDIO_RATE

    def frames(self) -> Iterator[Frame]:
        """Yield every frame the pushed audio now covers (after ``flush``: the rest)."""
        self._check_open()
        fpc = self.avatar.cfg.stream.frames_per_chunk
        while True:
            while self._ready:
                f = self._ready.pop(0)
                self._emitted = f.index + 1
                yield f
            limit = self._end_frame if self._end_frame is not None else self._seg_start + self._covered_frames()
            if self._next_frame >= limit or (self._end_frame is None and self._next_frame + fpc > limit):
                return
            self._generate_chunk(limit if self._end_frame is not None else None)

    def _generate_chunk(self, end_frame):
        spec = self.avatar.spec
        fpc = self.avatar.cfg.stream.frames_per_chunk
        # 1. take the chunk's audio (plus left context) from both tracks
        spk = self._tracks["speaker"].take(self._chunk_samples, self._ctx_samples)
        lis = self._tracks["listener"].take(self._chunk_samples, self._ctx_samples)
        # 2. the model: backbone steps, history advance, refiner, decode
        video = self.avatar.model.step(self._state, torch.from_numpy(spk)[None], torch.from_numpy(lis)[None])
        # 3. to uint8 RGB frames with their pts and speaker audio slice
        imgs = ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        spf = AUDIO_RATE // spec.fps
        audio = spk[-self._chunk_samples:]
        for j in range(fpc):
            idx = self._next_frame + j
            if end_frame is not None and idx >= end_frame:
                break
            self._ready.append(Frame(idx, idx / spec.fps, imgs[j], audio[j * spf:(j + 1) * spf].copy()))
        self._next_frame += fpc

    # ---- lifetime -----------------------------------------------------------------------------
    def _check_open(self):
        if self.closed:
            raise LPMError("session is closed")

    def close(self) -> None:
        if not self.closed:
            self._state.close()
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
