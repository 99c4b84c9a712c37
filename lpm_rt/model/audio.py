"""Audio front end: streaming resampler, causal log-mel, and the encoder to audio tokens.

Rates: the model hears ``AUDIO_RATE`` = 24 kHz (1000 samples per 24 fps video frame). Log-mel
frames use a 500-sample Hann window and a 250-sample hop, framed causally (frame j ends at
sample (j + 1) * hop), so 4 mel frames per video frame and 16 per latent frame; a chunk needs
``MEL_WIN - MEL_HOP`` samples of left context and nothing from the future.

The encoder is frame-local: latent frame f's tokens depend only on its own 16 mel frames, so a
stream and a whole clip give identical tokens. Context across frames comes from the blocks'
audio attention window (``ModelConfig.audio_context``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn as nn

__all__ = ["AUDIO_RATE", "LOG_MEL_SILENCE", "MEL_HOP", "MEL_WIN", "Resampler", "log_mel", "AudioEncoder", "audio_windows"]

AUDIO_RATE = 24000
MEL_HOP = 250
MEL_WIN = 500
MEL_NFFT = 512
MIN_RATE, MAX_RATE = 8000, 192000


@numba.njit(cache=True, fastmath=True)
def _sinc_at(x, t, half, cutoff):
    """Windowed-sinc (Hann) interpolation of x at position t, normalized over the taps inside x.
    ``cutoff`` <= 1 scales the kernel to low-pass below the output Nyquist when downsampling."""
    c = int(math.floor(t))
    acc = 0.0
    wsum = 0.0
    for j in range(c - half + 1, c + half + 1):
        if j < 0 or j >= x.shape[0]:
            continue
        d = t - j
        w = 0.5 + 0.5 * math.cos(math.pi * d / half)
        a = math.pi * d * cutoff
        s = cutoff if abs(a) < 1e-8 else math.sin(a) / (math.pi * d)
        acc += x[j] * s * w
        wsum += s * w
    return acc / wsum if wsum != 0.0 else 0.0


@numba.njit(cache=True, fastmath=True)
def _sinc_resample(x, n0, x0, p, q, n_out, half, cutoff, table):
    """Outputs n0 .. n0 + n_out - 1 of a p/q-step resample (output n at input position n * p / q;
    x[0] is input x0). Where all 2 * half taps lie in x, one row of ``table`` (the normalized
    kernel of each of the q phases, [q, 2 * half]; empty: none) gives the output; at the
    stream's edges, and without a table, :func:`_sinc_at` does."""
    out = np.zeros(n_out, dtype=np.float32)
    use_table = table.shape[0] == q
    for i in range(n_out):
        a = (n0 + i) * p
        c = a // q - x0
        lo = c - half + 1
        if use_table and lo >= 0 and c + half < x.shape[0]:
            row = table[a % q]
            acc = 0.0
            for m in range(2 * half):
                acc += x[lo + m] * row[m]
            out[i] = acc
        else:
            out[i] = _sinc_at(x, c + (a % q) / q, half, cutoff)
    return out


def _phase_table(p: int, q: int, half: int, cutoff: float) -> np.ndarray:
    """The q phases' kernels of :func:`_sinc_at` with every tap inside the signal, normalized:
    [q, 2 * half] float64. Tap m of phase r sits at distance d = r / q + half - 1 - m."""
    d = np.arange(q)[:, None] / q + (half - 1 - np.arange(2 * half))[None, :]
    w = 0.5 + 0.5 * np.cos(np.pi * d / half)
    a = np.pi * d * cutoff
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(np.abs(a) < 1e-8, cutoff, np.sin(a) / (np.pi * d))
    k = s * w
    return k / k.sum(axis=1, keepdims=True)


class Resampler:
    """Streaming resampler from ``rate_in`` to ``rate_out``: push pieces of any length, get the
    output samples they determine; state carries across pieces (exactly a whole-signal resample
    except for the last ``half`` input samples, which wait for more input or ``flush``)."""

    HALF = 16  # kernel half-width in input samples (of the lower of the two rates)
    TABLE_LIMIT = 1 << 18  # most kernel-table entries (float64) a resampler keeps

    def __init__(self, rate_in: int, rate_out: int = AUDIO_RATE):
        self.rate_in, self.rate_out = rate_in, rate_out
        self.step = rate_in / rate_out
        self.cutoff = min(1.0, rate_out / rate_in)
        self.half = int(math.ceil(self.HALF / self.cutoff))
        g = math.gcd(rate_in, rate_out)
        self.p, self.q = rate_in // g, rate_out // g           # output n sits at input n * p / q
        # a rational step repeats q kernel phases: tabulate them (2 * half MACs per output, no
        # sin/cos) unless the table would be large (rates with a tiny common divisor)
        small = self.q * 2 * self.half <= self.TABLE_LIMIT
        self.table = (_phase_table(self.p, self.q, self.half, self.cutoff) if small
                      else np.zeros((0, 2 * self.half)))
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0          # absolute input index of buf[0]
        self.n_out = 0              # output samples produced so far
        self.n_in = 0

    def push(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        if self.rate_in == self.rate_out:
            return x.astype(np.float32, copy=False)
        self.buf = np.concatenate([self.buf, x.astype(np.float32, copy=False)])
        self.n_in += len(x)
        # output i sits at input position i * step; it is final once input reaches pos + half
        limit = self.n_in if final else self.n_in - self.half
        total = int(math.floor(max(limit, 0) / self.step + 1e-9)) if limit > 0 else 0
        if final:
            total = int(round(self.n_in / self.step))
        n = max(total - self.n_out, 0)
        y = (_sinc_resample(self.buf, self.n_out, self.buf_start, self.p, self.q, n, self.half, self.cutoff,
                            self.table) if n else np.zeros(0, np.float32))
        self.n_out += n
        keep_from = max(int(math.floor(self.n_out * self.step)) - self.half - 1, self.buf_start)
        self.buf = self.buf[keep_from - self.buf_start:]
        self.buf_start = keep_from
        return y

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, np.float32), final=True)


def _mel_filterbank(n_mels: int, sr: int = AUDIO_RATE, n_fft: int = MEL_NFFT) -> torch.Tensor:
    """Triangular filters on the HTK mel scale: [n_fft // 2 + 1, n_mels]."""
    def hz2mel(f): return 2595.0 * np.log10(1.0 + f / 700.0)
    def mel2hz(m): return 700.0 * (10 ** (m / 2595.0) - 1.0)
    pts = mel2hz(np.linspace(hz2mel(30.0), hz2mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[:, m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return torch.from_numpy(fb).float()


_FB_CACHE: dict = {}


LOG_MEL_SILENCE = float(torch.log(torch.tensor(1e-5)))   # log_mel of digital silence, every bin (float32)


def log_mel(audio: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Causal log-mel. audio: [B, S + MEL_WIN - MEL_HOP] (the leading samples are left context)
    -> [B, S // MEL_HOP, n_mels]."""
    key = (n_mels, audio.device)                       # per device: no host copy inside a CUDA graph
    if key not in _FB_CACHE:
        _FB_CACHE[key] = (_mel_filterbank(n_mels).to(audio.device),
                          torch.hann_window(MEL_WIN, periodic=False).to(audio.device))
    fb, win = _FB_CACHE[key]
    frames = audio.float().unfold(-1, MEL_WIN, MEL_HOP) * win                 # (B, n, MEL_WIN)
    power = torch.fft.rfft(frames, n=MEL_NFFT).abs().pow(2)                  # (B, n, NFFT/2+1)
    return torch.log(power @ fb + 1e-5)


class AudioEncoder(nn.Module):
    """Log-mel of one latent frame (16 mel frames) -> ``audio_tokens_per_frame`` tokens.
    Names: ``audio_encoder.proj.{0,2}``, ``audio_encoder.pos`` and, with
    ``ModelConfig.audio_window_pos``, ``audio_encoder.window``.

    ``pos`` says which token of its frame a token is, not which frame: audio cross-attention is
    un-rotated, so without ``window`` a frame's window (its own tokens and ``audio_context``
    earlier frames') is a bag in which the frame's own audio and its context look alike, and
    what reads it follows a blend of both (measured: the mouth trails espeak-ng speech by about
    a latent frame). ``window`` [audio_context + 1, audio_dim] is added per slot, oldest first;
    it starts at zero, so a model without it is unchanged until trained."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.mel_per_frame = cfg.vae_temporal * (AUDIO_RATE // 24) // MEL_HOP
        if self.mel_per_frame % cfg.audio_tokens_per_frame:
            raise ValueError("mel frames per latent frame must divide into audio tokens")
        self.group = self.mel_per_frame // cfg.audio_tokens_per_frame
        self.proj = nn.Sequential(nn.Linear(self.group * cfg.n_mels, cfg.audio_dim), nn.GELU(approximate="tanh"),
                                  nn.Linear(cfg.audio_dim, cfg.audio_dim))
        self.pos = nn.Parameter(torch.zeros(cfg.audio_tokens_per_frame, cfg.audio_dim))
        if cfg.audio_window_pos:
            self.window = nn.Parameter(torch.zeros(cfg.audio_context + 1, cfg.audio_dim))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: [B, F * mel_per_frame, n_mels] -> tokens [B, F, A, audio_dim]."""
        B, n, m = mel.shape
        Fr = n // self.mel_per_frame
        # log-mel of silence is log(1e-5) ~ -11.5: shift/scale to a unit-ish range
        x = ((mel + 5.0) / 5.0).reshape(B, Fr, self.cfg.audio_tokens_per_frame, self.group * m)
        return self.proj(x.to(self.pos.dtype)) + self.pos


def audio_windows(tokens: torch.Tensor, context: int, slot: torch.Tensor | None = None) -> torch.Tensor:
    """tokens: [B, context + F, A, Da] (the first ``context`` frames precede the clip)
    -> [B, F, (context + 1) * A, Da]: each frame's own tokens plus the previous ``context`` frames',
    oldest first; ``slot`` [context + 1, Da] (``AudioEncoder.window``) is added per frame slot."""
    Fr = tokens.shape[1] - context
    win = torch.stack([tokens[:, c:c + Fr] for c in range(context + 1)], dim=2)  # (B, F, ctx+1, A, Da)
    if slot is not None:
        win = win + slot[:, None].to(win.dtype)
    return win.flatten(2, 3)
