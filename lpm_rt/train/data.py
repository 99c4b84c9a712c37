"""Training data: the adapter from the synthetic world's clips to model tensors.

A :class:`Clip` is what any source hands over -- video frames (uint8), the two audio tracks at
their own rate, reference images and a prompt. :func:`collate` turns a list of clips into a
:class:`Batch` of tensors the trainers use:

* ``video``    [B, 3, T, H, W] in [-1, 1] (the VAE encodes it inside the step, since the VAE is
               itself trained by ``train base``);
* ``mels``     (speaker, listener) log-mels [B, (audio_context + F) * 16, n_mels] at 24 kHz, the
               first ``audio_context`` latent frames being the audio *before* the clip, exactly
               the layout :meth:`LPMDiT.forward` and the runtime's ``step`` use;
* ``ref_images`` [B, R, 3, H, W] in [-1, 1] and ``ref_kinds`` [R] (encoded like the runtime does,
               :meth:`VAE.encode_image`);
* ``tag_ids``  [B, L] prompt tag ids (embedded by the network being trained);
* ``mouth``    [B, T, 3] the mouth centre (x, y) in pixels and its opening (0-1) per frame, or
               None: a training-only annotation (the world knows it; a dataset does not) for the
               mouth's losses (:mod:`lpm_rt.train.mouth`).

Sources (all indexable: ``source.clip(i)`` is a pure function of ``i``, so every rank and every
resumed run draws the same data for the same step):

* :class:`WorldSource`   -- generated on the fly by :mod:`lpm_rt.world` (conversation + render);
* :class:`DatasetSource` -- a dataset directory written by ``python -m lpm_rt.world.dataset``
  (``--data DIR``; PyAV decode on CPU, the world reader's DALI decode when a GPU is present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import LPMConfig, RefKind
from ..model.audio import AUDIO_RATE, MEL_HOP, MEL_WIN, Resampler, log_mel
from ..model.text import tag_ids

__all__ = ["Clip", "Batch", "collate", "WorldSource", "DatasetSource", "make_source", "clip_frames",
           "batch_indices", "pick_references", "EncodedPool"]


@dataclass
class Clip:
    """One training clip. ``audio_lead`` samples of each track precede video frame 0 (real audio
    context; zero-padded to what the model needs)."""

    video: np.ndarray                 # [T, H, W, 3] uint8
    audio_self: np.ndarray            # [lead + n] float32 in [-1, 1]: the rendered character (speaker)
    audio_partner: np.ndarray         # [lead + n] float32: the other party (listener track)
    sample_rate: int
    refs: list = field(default_factory=list)        # [H, W, 3] uint8 images
    ref_kinds: list = field(default_factory=list)   # RefKind names, one per ref
    prompt: str = ""
    audio_lead: int = 0
    mouth: np.ndarray | None = None   # [T, 3] mouth centre (x, y) in pixels of ``video`` and opening, if known


@dataclass
class Batch:
    video: torch.Tensor               # [B, 3, T, H, W] in [-1, 1]
    mels: tuple                       # (speaker, listener) [B, (ctx + F) * 16, n_mels]
    ref_images: torch.Tensor          # [B, R, 3, H, W] in [-1, 1] (R may be 0)
    ref_kinds: torch.Tensor           # [R] int64
    tag_ids: torch.Tensor             # [B, L] int64
    mouth: torch.Tensor | None = None # [B, T, 3] mouth centre (x, y) in pixels of ``video``, opening

    def to(self, device) -> "Batch":
        return Batch(self.video.to(device), tuple(m.to(device) for m in self.mels), self.ref_images.to(device),
                     self.ref_kinds.to(device), self.tag_ids.to(device),
                     None if self.mouth is None else self.mouth.to(device))


def clip_frames(cfg: LPMConfig, latent_frames: int) -> int:
    """Video frames of a clip of ``latent_frames`` latent frames."""
    return latent_frames * cfg.model.vae_temporal


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    r = Resampler(rate, AUDIO_RATE)
    return np.concatenate([r.push(x), r.flush()]) if rate != AUDIO_RATE else x.astype(np.float32)


def _track_mel(audio: np.ndarray, lead: int, rate: int, frames: int, cfg: LPMConfig) -> torch.Tensor:
    """Log-mel of one track, laid out as the runtime does: [(ctx + F) * 16, n_mels]."""
    m = cfg.model
    spl = m.vae_temporal * AUDIO_RATE // cfg.stream.fps                    # samples per latent frame
    need_ctx = (MEL_WIN - MEL_HOP) + m.audio_context * spl                  # samples before frame 0
    y = _resample(np.asarray(audio, np.float32), rate)
    lead24 = int(round(lead * AUDIO_RATE / rate))
    body = y[lead24:lead24 + frames * spl]
    body = np.pad(body, (0, frames * spl - len(body)))
    ctx = y[max(lead24 - need_ctx, 0):lead24]
    ctx = np.pad(ctx, (need_ctx - len(ctx), 0))                             # silence before the stream
    a = torch.from_numpy(np.concatenate([ctx, body]).astype(np.float32))[None]
    return log_mel(a, m.n_mels)[0]


def _images(imgs, height: int, width: int) -> torch.Tensor:
    """list of [H, W, 3] uint8 -> [N, 3, height, width] in [-1, 1] (resized if needed)."""
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x


def _frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8 (the inverse of :func:`_images`)."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def collate(clips: list, cfg: LPMConfig) -> Batch:
    """Clips -> a :class:`Batch`. Every clip must have the same frame count (a multiple of
    ``vae_temporal``). References: the first R of each clip, R = the fewest any clip has; kinds
    follow the first clip. Prompts of different tag counts are padded by cycling the clip's own
    tags (exact for one-tag prompts: attention over repeated identical keys is unchanged)."""
    s, m = cfg.stream, cfg.model
    T = clips[0].video.shape[0]
    if T % m.vae_temporal or any(c.video.shape[0] != T for c in clips):
        raise ValueError(f"clips must share a frame count that is a multiple of {m.vae_temporal}")
    frames = T // m.vae_temporal
    video = torch.stack([_images(list(c.video), s.height, s.width) for c in clips])   # (B, T, 3, H, W)
    mels = tuple(torch.stack([_track_mel(getattr(c, tr), c.audio_lead, c.sample_rate, frames, cfg)
                              for c in clips]) for tr in ("audio_self", "audio_partner"))
    R = min(min(len(c.refs) for c in clips), s.reference_slots)
    if R:
        refs = torch.stack([_images(c.refs[:R], s.height, s.width) for c in clips])    # (B, R, 3, H, W)
    else:
        refs = torch.zeros(len(clips), 0, 3, s.height, s.width)
    kinds = torch.tensor([int(RefKind[str(k).upper()]) for k in clips[0].ref_kinds[:R]], dtype=torch.long)
    ids = [tag_ids(c.prompt, m.num_tags) for c in clips]
    L = max(len(i) for i in ids)
    tags = torch.tensor([[i[j % len(i)] for j in range(L)] for i in ids], dtype=torch.long)
    mouth = None
    if all(c.mouth is not None for c in clips):                # in pixels of the (resized) frames
        scale = torch.tensor([[s.width / c.video.shape[2], s.height / c.video.shape[1], 1.0] for c in clips])
        mouth = torch.stack([torch.as_tensor(np.asarray(c.mouth), dtype=torch.float32) for c in clips])
        mouth = mouth * scale[:, None, :]
    return Batch(video.transpose(1, 2).contiguous(), mels, refs, kinds, tags, mouth)


def batch_indices(seed: int, stage: str, step: int, rank: int, world: int, batch: int) -> list:
    """Clip indices of one rank's batch at ``step``: disjoint across ranks, a pure function of
    its arguments (so resumed runs see the same data)."""
    base = (step * world + rank) * batch
    salt = sum(ord(ch) * 131 ** i for i, ch in enumerate(stage)) % 1_000_003
    return [seed * 10_000_019 + salt * 7919 + base + b for b in range(batch)]


# ---- sources -------------------------------------------------------------------------------------

def pick_references(refs: list, prompt: str, slots: int, rng: np.random.Generator) -> tuple:
    """Choose up to ``slots`` of ``refs`` ([(image, kind, expression)]) the way a user would give
    them: the ``global`` one, then a random ``body_view``, then the ``face_expression`` of the
    prompt's expression (any one if it has none). -> (images, kinds)."""
    from ..world.character import TAG_TO_EXPRESSION
    want = TAG_TO_EXPRESSION.get(prompt.strip().split(" ")[0] if prompt.strip() else "", None)
    by_kind: dict = {}
    for img, kind, expr in refs:
        by_kind.setdefault(kind, []).append((img, expr))
    out = []
    for kind in ("global", "body_view", "face_expression"):
        cands = by_kind.get(kind, [])
        if not cands:
            continue
        match = [c for c in cands if c[1] == want] if kind == "face_expression" else []
        pool = match or cands
        out.append((pool[int(rng.integers(len(pool)))][0], kind))
    out = out[:slots]
    return [o[0] for o in out], [o[1] for o in out]


class WorldSource:
    """Clips generated on the fly by the synthetic world (:mod:`lpm_rt.world`).

    Clip ``i``: a conversation of seed ``i`` a little longer than needed, cropped at a random
    start (the audio before the crop is the clip's real audio context); references of the same
    character in the conversation's scene, drawn as the world's dataset writer draws them."""

    VOICES = ("synth", "espeak", "mix")

    def __init__(self, cfg: LPMConfig, frames: int, modes=("conversation", "speaking", "listening"),
                 voice: str = "synth", focus: float = 0.0, focus_seed: int | None = None):
        """``voice``: the world's numpy synthesizer, espeak-ng, or ``mix`` (each clip one or the
        other, half and half; needs espeak-ng installed for anything but ``synth``). ``focus``:
        the fraction of clips whose character is ``focus_seed``'s (the shipped demo character by
        default) -- the rest are a new random character per clip."""
        from ..world import Character, Conversation, render_reference, render_video   # the world may still
        from ..world.render import landmarks, mouth_opening, states_from_labels
        from ..world.audio import espeak_available                                   # change: import it
        from ..world.dataset import REFERENCES                                       # where it is used
        if voice not in self.VOICES:
            raise ValueError(f"voice must be one of {', '.join(self.VOICES)}")
        if voice != "synth" and not espeak_available():
            raise ValueError(f"voice {voice!r} needs espeak-ng (apt install espeak-ng, or pip install espeakng-loader)")
        if not 0.0 <= focus <= 1.0:
            raise ValueError("focus must be in [0, 1]")
        if focus_seed is None:
            from ..assets import DEFAULT_CHARACTER_SEED
            focus_seed = DEFAULT_CHARACTER_SEED
        self.cfg, self.frames, self.modes, self.voice, self.focus = cfg, frames, tuple(modes), voice, focus
        self._focus_char = Character.random(focus_seed)
        self._gen, self._ref, self._video = Conversation.generate, render_reference, render_video
        self._landmarks, self._states, self._opening = landmarks, states_from_labels, mouth_opening
        self._refs = REFERENCES

    def clip(self, index: int) -> Clip:
        s = self.cfg.stream
        rng = np.random.default_rng([int(index), 0x7A1])
        seconds = (self.frames + 12) / s.fps + float(rng.uniform(0.5, 2.0))
        mode = self.modes[int(rng.integers(len(self.modes)))]
        u_voice, u_focus = rng.uniform(size=2)
        voice = self.voice if self.voice != "mix" else ("espeak" if u_voice < 0.5 else "synth")
        character = self._focus_char if u_focus < self.focus else None
        conv = self._gen(int(index) % (2 ** 31), seconds, mode=mode, voice_backend=voice, character=character)
        start = int(rng.integers(0, conv.num_frames - self.frames + 1))
        labels = {k: np.asarray(v)[start:start + self.frames] for k, v in conv.labels.items()}
        size = (s.height, s.width)
        video = self._video(conv.character, labels, conv.scene, size)
        sr = conv.sample_rate
        a0, a1 = int(round(start * sr / s.fps)), int(round((start + self.frames) * sr / s.fps))
        lead = min(a0, sr)                                          # up to 1 s of real context
        refs = [(self._ref(conv.character, view, expr, size, conv.scene), kind, expr)
                for view, expr, kind in self._refs]
        imgs, kinds = pick_references(refs, conv.prompt, s.reference_slots, rng)
        mouth = np.array([(*self._landmarks(conv.character, st, *size)["mouth"], self._opening(st))
                          for st in self._states(labels)], np.float32)
        return Clip(video, conv.self_audio[a0 - lead:a1], conv.partner_audio[a0 - lead:a1], sr, imgs, kinds,
                    conv.prompt, lead, mouth)


class DatasetSource:
    """Clips read from a dataset directory written by ``python -m lpm_rt.world.dataset``.

    Clip ``i`` is a random ``frames``-long crop of dataset item ``i % len``: only the crop is
    decoded (PyAV on CPU; the world reader's DALI GPU decode when ``backend`` resolves to it),
    the wav tracks and reference PNGs come through the world's media helpers."""

    def __init__(self, cfg: LPMConfig, root, frames: int, backend: str = "auto"):
        from ..media import read_image, read_video, read_wav
        from ..world.dataset import WorldDataset
        self.cfg, self.frames, self.root = cfg, frames, Path(root)
        self.ds = WorldDataset(self.root, backend)
        self._video, self._image, self._wav = read_video, read_image, read_wav
        if len(self.ds) == 0:
            raise ValueError(f"{self.root}: empty dataset")

    def __len__(self):
        return len(self.ds)

    def clip(self, index: int) -> Clip:
        rng = np.random.default_rng([int(index), 0xDA7A])
        i = int(index) % len(self.ds)
        entry, d = self.ds.index["clips"][i], self.ds.clip_dir(i)
        n, fps = int(entry["frames"]), int(self.ds.index["fps"])
        if n < self.frames:
            raise ValueError(f"{d}: {n} frames < the {self.frames} a clip needs")
        start = int(rng.integers(0, n - self.frames + 1))
        if self.ds.backend == "pyav":
            video = self._video(d / "video.mp4", start, self.frames)
        else:
            video = self.ds.read_video(i)[start:start + self.frames].cpu().numpy()
        (spk, sr), (lis, _) = self._wav(d / "self.wav"), self._wav(d / "partner.wav")
        a0, a1 = int(round(start * sr / fps)), int(round((start + self.frames) * sr / fps))
        lead = min(a0, sr)
        refs = [(self._image(d / r["file"]), r["kind"], r.get("expression")) for r in entry["references"]]
        imgs, kinds = pick_references(refs, entry.get("prompt", ""), self.cfg.stream.reference_slots, rng)
        return Clip(video, spk[a0 - lead:a1], lis[a0 - lead:a1], sr, imgs, kinds, entry.get("prompt", ""), lead)


def make_source(cfg: LPMConfig, frames: int, data: str | None = None, factory: str | None = None, **world):
    """``factory`` "module:callable" (called as ``callable(cfg, frames)``, any object with
    ``clip(i) -> Clip``) > ``data`` (a dataset directory) > the world generator on the fly
    (``world``: :class:`WorldSource` options)."""
    if factory:
        import importlib
        mod, _, name = factory.partition(":")
        return getattr(importlib.import_module(mod), name)(cfg, frames)
    return WorldSource(cfg, frames, **world) if data is None else DatasetSource(cfg, data, frames)


class EncodedPool:
    """Clips encoded once by a frozen VAE and reused: clip index ``i`` maps to slot ``i % size``,
    which holds the source's clip ``i % size`` (a pure function of ``i``, so resumed runs draw
    the same data), generated, collated and encoded the first time it is drawn and kept (latents, log-mels,
    reference latents, tags) on ``device``. On CPU the world's generator, collation and the VAE
    encoder cost twice the DiT's own step at the demo preset; with a pool they are paid once
    per slot. ``size`` 0 keeps nothing (every draw is fresh).

    ``encode(batch) -> (z, Cond)`` is the trainer's encoder (:func:`~lpm_rt.train.base.encode_batch`
    with its VAE); the pool holds slots of batch 1 and stacks them, so a batch equals the one
    ``encode(collate(clips))`` gives whenever the clips' prompts have the same tag count."""

    def __init__(self, source, cfg: LPMConfig, encode, size: int, device="cpu"):
        self.source, self.cfg, self.encode, self.size, self.device = source, cfg, encode, int(size), device
        self._slots: dict = {}

    def __len__(self) -> int:
        return len(self._slots)

    def _slot(self, index: int):
        key = index % self.size
        if key not in self._slots:
            b = collate([self.source.clip(key)], self.cfg).to(self.device)
            self._slots[key] = (*self.encode(b), b.mouth)
        return self._slots[key]

    def batch(self, indices: list, mouth: bool = False):
        """-> (latents, Cond), or with ``mouth`` (latents, Cond, :attr:`Batch.mouth` or None)."""
        from .flow import Cond
        if self.size <= 0:
            b = collate([self.source.clip(i) for i in indices], self.cfg).to(self.device)
            return (*self.encode(b), b.mouth) if mouth else self.encode(b)
        items = [self._slot(int(i)) for i in indices]
        z = torch.cat([it[0] for it in items])
        conds = [it[1] for it in items]
        L = max(c.tag_ids.shape[1] for c in conds)                 # pad tags by cycling, as collate does
        tags = torch.cat([c.tag_ids[:, torch.arange(L) % c.tag_ids.shape[1]] for c in conds])
        mels = tuple(torch.cat([c.mels[j] for c in conds]) for j in range(len(conds[0].mels)))
        R = min(0 if c.refs is None else c.refs.shape[2] for c in conds)
        refs = torch.cat([c.refs[:, :, :R] for c in conds]) if R else None
        cond = Cond(tags, mels, refs, conds[0].ref_kinds[:R] if R else None)
        if not mouth:
            return z, cond
        m = [it[2] for it in items]
        return z, cond, None if any(x is None for x in m) else torch.cat(m)
