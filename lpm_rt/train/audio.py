"""Audio pre-training: teach the audio encoder what the audio predicts before the teacher learns
to draw it (``train base --audio-pretrain N``).

A listener's nod answers the partner's stressed syllables 0.2-0.35 s earlier, half the time
or less, so the partner's audio predicts the head's pitch only loosely: a reader of the model's
own audio path (per-token MLP, slot embeddings, one cross-attention) fitted to it directly reads
it at a held-out correlation of 0.14 / 0.25 / 0.42 after 13k / 96k / 384k latent frames drawn
from 150 listening clips (``scripts/nod_learnability.py --reader attn``). A teacher sees far
less: the demo recipe's pool of 300 clips holds 2,700 latent frames (7.5 minutes), under half
of them listening, and the flow loss weighs a nod (a few pixels) next to the whole frame.
Audio alone is cheap (no rendering, no VAE, no DiT), so this stage fits the encoder on many
world conversations first: the listener window of each latent frame to the
head's pitch (z-scored within its clip), the speaker window to the mouth's opening, each read
by a small attention head (``aux`` of the run, discarded with it). The teacher then has a
feature to route instead of a detector to discover.

Training-only: the runtime never sees behaviour labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LPMConfig
from ..model.audio import AUDIO_RATE, MEL_HOP
from ..world.analyzer import _corr as bench_corr
from .data import _track_mel

__all__ = ["WindowReader", "AudioLabelPool", "audio_readers", "audio_pretrain_loss", "readout"]

MOUTH_SCALE = 0.25     # ~ the std of the world's mouth opening over speech: the two losses alike


class WindowReader(nn.Module):
    """One audio window [B, Ka, audio_dim] -> a scalar: a learned query's multi-head attention
    over the window's tokens, then an MLP (the shape of the model's audio cross-attention)."""

    def __init__(self, audio_dim: int, dim: int = 128, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.kv = nn.Linear(audio_dim, 2 * dim)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(approximate="tanh"),
                                  nn.Linear(dim, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        k, v = self.kv(tokens).chunk(2, -1)
        split = lambda t: t.reshape(B, t.shape[1], self.heads, -1).transpose(1, 2)    # noqa: E731
        a = F.scaled_dot_product_attention(split(self.query.expand(B, 1, -1)), split(k), split(v))
        return self.head(a.transpose(1, 2).flatten(2))[:, 0, 0]


def audio_readers(cfg: LPMConfig) -> nn.ModuleDict:
    """The pre-training's two readers: ``head`` (listener window) and ``mouth`` (speaker window)."""
    return nn.ModuleDict({"head": WindowReader(cfg.model.audio_dim), "mouth": WindowReader(cfg.model.audio_dim)})


def _mel_per_latent(cfg: LPMConfig) -> int:
    """Log-mel frames per latent frame (16 at 24 fps, 4 video frames per latent frame)."""
    return cfg.model.vae_temporal * (AUDIO_RATE // cfg.stream.fps) // MEL_HOP


def _per_latent(x: np.ndarray, frames: int, temporal: int) -> np.ndarray:
    return np.asarray(x[:frames * temporal], np.float64).reshape(frames, temporal).mean(1)


class AudioLabelPool:
    """World conversations as audio and behaviour labels only: clip ``i`` (a pure function of
    ``i % size`` and the seed, generated the first time it is drawn; ``modes``: the world's
    conversation modes to draw from, all by default) holds both tracks' log-mels
    laid out as training lays them out ([(ctx + F) * 16, n_mels], silence before the clip) and,
    per latent frame, the head's pitch z-scored within the clip and the mouth's opening."""

    def __init__(self, cfg: LPMConfig, size: int, seconds: float = 30.0, voice: str = "synth", seed: int = 0,
                 modes: tuple | None = None):
        from ..world.audio import espeak_available
        if voice != "synth" and not espeak_available():
            raise ValueError(f"voice {voice!r} needs espeak-ng (apt install espeak-ng, or pip install espeakng-loader)")
        if size < 1 or seconds < 1.0:
            raise ValueError("the audio pool needs >= 1 clip of >= 1 s")
        from ..world.conversation import MODES
        self.cfg, self.size, self.seconds, self.voice, self.seed = cfg, int(size), float(seconds), voice, int(seed)
        self.modes = tuple(modes or MODES)
        self._clips: dict = {}

    def clip(self, index: int) -> dict:
        from ..world.conversation import Conversation
        key = int(index) % self.size
        if key not in self._clips:
            rng = np.random.default_rng([self.seed, key, 0xA0D])
            mode = self.modes[int(rng.integers(len(self.modes)))]
            voice = self.voice if self.voice != "mix" else ("espeak" if rng.uniform() < 0.5 else "synth")
            conv = Conversation.generate(900_000 + self.seed * 10_000 + key, self.seconds, mode=mode,
                                         voice_backend=voice)
            m = self.cfg.model
            frames = conv.num_frames // m.vae_temporal
            mels = [_track_mel(a, 0, conv.sample_rate, frames, self.cfg) for a in (conv.self_audio, conv.partner_audio)]
            pitch = _per_latent(conv.labels["pitch"], frames, m.vae_temporal)
            self._clips[key] = {
                "mels": mels, "frames": frames,
                "head": torch.from_numpy((pitch - pitch.mean()) / (pitch.std() + 1e-6)).float(),
                "mouth": torch.from_numpy(_per_latent(conv.labels["mouth_open"], frames, m.vae_temporal)
                                          / MOUTH_SCALE).float()}
        return self._clips[key]

    def batch(self, gen: torch.Generator, clips: list, n: int) -> tuple:
        """``n`` latent frames drawn uniformly from ``clips`` -> ((speaker, listener) windows of
        log-mel [n, (ctx + 1) * 16, n_mels], head targets [n], mouth targets [n])."""
        m = self.cfg.model
        per = _mel_per_latent(self.cfg)
        span = (m.audio_context + 1) * per
        spk, lst, head, mouth = [], [], [], []
        for j in torch.randint(len(clips), (n,), generator=gen).tolist():
            c = self.clip(clips[j])
            f = int(torch.randint(c["frames"], (1,), generator=gen))
            spk.append(c["mels"][0][f * per:f * per + span])
            lst.append(c["mels"][1][f * per:f * per + span])
            head.append(c["head"][f])
            mouth.append(c["mouth"][f])
        return (torch.stack(spk), torch.stack(lst)), torch.stack(head), torch.stack(mouth)


def audio_pretrain_loss(net, readers: nn.ModuleDict, mels: tuple, head: torch.Tensor,
                        mouth: torch.Tensor) -> dict:
    """Mean squared error of the readers on the encoder's windows (``net``: the backbone):
    ``head`` from the listener's window, ``mouth`` from the speaker's; ``corr_*`` their
    correlations with the targets over the batch (a progress figure)."""
    spk, lst = net.encode_audio(mels[0], speaker=True)[:, 0], net.encode_audio(mels[1])[:, 0]
    ph, pm = readers["head"](lst), readers["mouth"](spk)
    l_head, l_mouth = (ph - head).pow(2).mean(), (pm - mouth).pow(2).mean()

    def corr(a, b):
        a, b = a.detach() - a.detach().mean(), b - b.mean()
        return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-8)

    return {"loss": l_head + l_mouth, "head": l_head, "mouth": l_mouth,
            "corr_head": corr(ph, head), "corr_mouth": corr(pm, mouth)}


@torch.no_grad()
def readout(net, readers: nn.ModuleDict, cfg: LPMConfig, clips: int = 24, seconds: float = 30.0,
            voice: str = "synth", seed: int = 1) -> dict:
    """Held-out figures of a pre-trained encoder and its readers: the mean within-clip correlation
    of the ``head`` reader with the head's pitch on listening clips, of the ``mouth`` reader with
    the opening on speaking clips, and ``head_rolled`` (each clip's reading against the next
    clip's pitch: chance). ``seed`` != the training pool's keeps the clips unseen."""
    ctx, per = cfg.model.audio_context, _mel_per_latent(cfg)
    out = {}
    for name, mode, track in (("head", "listening", 1), ("mouth", "speaking", 0)):
        pool = AudioLabelPool(cfg, clips, seconds, voice=voice, seed=seed, modes=(mode,))
        reads, wants = [], []
        for i in range(clips):
            c = pool.clip(i)
            m = c["mels"][track]
            win = torch.stack([m[f * per:(f + ctx + 1) * per] for f in range(c["frames"])])
            reads.append(readers[name](net.encode_audio(win, speaker=track == 0)[:, 0]).numpy())
            wants.append(c[name].numpy())
        out[name] = float(np.mean([_corr(r, w) for r, w in zip(reads, wants)]))
        if name == "head":
            out["head_rolled"] = float(np.mean([_corr(reads[i], wants[(i + 1) % clips])
                                                for i in range(clips)]))
    return out


def _corr(a, b) -> float:
    """The bench's within-clip correlation over the common length, 0 where it is undefined."""
    n = min(len(a), len(b))
    c = bench_corr(a[:n], b[:n])
    return 0.0 if c is None else c
