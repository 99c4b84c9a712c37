"""How much of the listener's head motion can the partner's audio predict, per audio window?

The world's listener nods 0.2-0.35 s after the partner's stressed syllables, for half a second
(`lpm_rt/world/conversation.py`), so the nod in a latent frame answers audio 0.2-0.85 s back.
This fits a small convolutional regressor, apart from any avatar model, from the partner's
log-mel over the last K latent frames (the window a frame's audio cross-attention reads:
K = ``audio_context`` + 1) to the latent frame's mean head pitch (z-scored within its clip) and
its nod fraction, on world listening clips, and reports the held-out within-clip correlations:
what an audio window of that width can carry at best with this much data. ``rolled`` pairs each
held-out clip's audio with another clip's labels (chance, ~0).

``--reader`` swaps the regressor for what the avatar model reads the window with, to tell whether
its audio path can carry what the window holds: ``attn`` is the model's (a per-token MLP on 4 mel
frames, token and window-slot embeddings, one 8-head cross-attention from a learned query, then
an MLP head); ``tconv-attn`` the same after a causal temporal convolution over the window's mel
(``ModelConfig.audio_temporal``).

    python scripts/nod_learnability.py [--train-clips 150] [--windows 2 5] [--reader conv attn] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from lpm_rt.model.audio import AUDIO_RATE, MEL_HOP, MEL_WIN, Resampler, log_mel
from lpm_rt.world.conversation import SR, Conversation

MEL_PER_LATENT = 16            # log-mel frames per latent frame (4 video frames at 24 fps, 24 kHz)
N_MELS = 64


def _clip(seed: int, seconds: float):
    """(log-mel [F, 16, n_mels], pitch [F], nod fraction [F]) of one listening clip, F latent frames."""
    c = Conversation.generate(seed, seconds, "listening", "calm", voice_backend="synth")
    r = Resampler(SR, AUDIO_RATE)
    pcm = np.concatenate([np.zeros(MEL_WIN - MEL_HOP, np.float32), r.push(c.partner_audio), r.flush()])
    mel = log_mel(torch.from_numpy(pcm.astype(np.float32))[None], N_MELS)[0]
    F = min(c.num_frames // 4, len(mel) // MEL_PER_LATENT)
    per_latent = lambda x: np.asarray(x[:4 * F], np.float64).reshape(F, 4).mean(1)   # noqa: E731
    return mel[:F * MEL_PER_LATENT].reshape(F, MEL_PER_LATENT, N_MELS), per_latent(c.labels["pitch"]), \
        per_latent(c.labels["nod"])


def _windows(mel: torch.Tensor, k: int) -> torch.Tensor:
    """[F, 16, n] -> [F, 16 k, n]: each latent frame's own log-mel and the k - 1 before it
    (silence before the clip)."""
    pad = torch.cat([torch.full((k - 1, *mel.shape[1:]), float(np.log(1e-5))), mel])
    return torch.stack([pad[i:i + k].flatten(0, 1) for i in range(len(mel))])


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 1e-9 and b.std() > 1e-9 else 0.0


class Regressor(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(N_MELS, 64, 5, padding=2), nn.GELU(),
                                  nn.Conv1d(64, 64, 5, padding=2, stride=2), nn.GELU(),
                                  nn.Conv1d(64, 64, 5, padding=2, stride=2), nn.GELU())
        self.head = nn.Linear(64 * (MEL_PER_LATENT * k // 4), 2)

    def forward(self, x):                               # [B, 16 k, n_mels] -> [B, 2]
        return self.head(self.conv(x.transpose(1, 2)).flatten(1))


class AttnReader(nn.Module):
    """The avatar model's audio path as a reader: tokens of 4 mel frames (per-token MLP, token and
    window-slot embeddings; with ``temporal`` a causal conv over the window's mel first), one
    multi-head cross-attention from a learned query, an MLP head."""

    def __init__(self, k: int, temporal: bool, dim: int = 256, adim: int = 128, heads: int = 8):
        super().__init__()
        self.k, self.heads = k, heads
        self.temporal = nn.Sequential(nn.Conv1d(N_MELS, N_MELS, 9), nn.GELU(),
                                      nn.Conv1d(N_MELS, N_MELS, 9)) if temporal else None
        self.proj = nn.Sequential(nn.Linear(4 * N_MELS, adim), nn.GELU(), nn.Linear(adim, adim))
        self.pos = nn.Parameter(torch.zeros(4, adim))
        self.slot = nn.Parameter(torch.zeros(k, 1, adim))
        self.query = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.kv = nn.Linear(adim, 2 * dim)
        self.o = nn.Linear(dim, dim)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2))

    def forward(self, x):                               # [B, 16 k, n_mels] -> [B, 2]
        if self.temporal is not None:                   # causal: left-pad with the window's first frame
            h = x.transpose(1, 2)
            h = self.temporal(torch.cat([h[..., :1].expand(-1, -1, 16), h], -1))
            x = x + h.transpose(1, 2)
        B = x.shape[0]
        tok = self.proj(x.reshape(B, self.k, 4, 4 * N_MELS)) + self.pos + self.slot
        k, v = self.kv(tok.flatten(1, 2)).chunk(2, -1)
        split = lambda t: t.view(B, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.query.expand(B, 1, -1))
        a = torch.nn.functional.scaled_dot_product_attention(q, split(k), split(v))
        return self.head(self.o(a.transpose(1, 2).flatten(2))[:, 0])


READERS = {"conv": lambda k: Regressor(k), "attn": lambda k: AttnReader(k, False),
           "tconv-attn": lambda k: AttnReader(k, True)}


def fit_and_score(train, test, k: int, steps: int, seed: int, reader: str = "conv", batch: int = 256) -> dict:
    torch.manual_seed(seed)
    X = torch.cat([_windows(m, k) for m, _, _ in train])
    mu, sd = X.mean(), X.std()
    Y = torch.tensor(np.concatenate([np.stack([_z(p), n], 1) for _, p, n in train]), dtype=torch.float32)
    net = READERS[reader](k)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(X), (batch,), generator=g)
        loss = ((net((X[i] - mu) / sd) - Y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        preds = [net((_windows(m, k) - mu) / sd).numpy() for m, _, _ in test]
        fit = [net((_windows(m, k) - mu) / sd).numpy() for m, _, _ in train[:len(test)]]
    n = len(test)
    return {
        "pitch": float(np.mean([_corr(o[:, 0], p) for o, (_, p, _) in zip(preds, test)])),
        "nod": float(np.mean([_corr(o[:, 1], d) for o, (_, _, d) in zip(preds, test)])),
        "pitch_rolled": float(np.mean([_corr(preds[i][:, 0], test[(i + 1) % n][1]) for i in range(n)])),
        "pitch_train": float(np.mean([_corr(o[:, 0], p) for o, (_, p, _) in zip(fit, train)])),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-clips", type=int, default=150, help="world listening clips to fit on (default 150)")
    ap.add_argument("--test-clips", type=int, default=24, help="held-out clips (default 24)")
    ap.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30)")
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 5],
                    help="audio windows in latent frames, audio_context + 1 (default: 2 5)")
    ap.add_argument("--reader", nargs="+", default=["conv"], choices=sorted(READERS),
                    help="what reads the window: the conv regressor, or the model's audio path (default: conv)")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps per window (default 1500)")
    ap.add_argument("--batch", type=int, default=256, help="latent frames per optimizer step (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    train = [_clip(1000 + a.seed * 100_000 + i, a.seconds) for i in range(a.train_clips)]
    test = [_clip(5000 + a.seed * 100_000 + i, a.seconds) for i in range(a.test_clips)]
    res = {"what": __doc__.split("\n\n")[0], "device": f"{platform.machine()}, {torch.get_num_threads()} CPU threads",
           "clips": [a.train_clips, a.test_clips],
           "seconds": a.seconds, "steps": a.steps, "batch": a.batch,
           "by_window": {str(k) if r == "conv" else f"{k} {r}":
                         {key: round(v, 3) for key, v in fit_and_score(train, test, k, a.steps, a.seed, r, a.batch).items()}
                         for r in a.reader for k in a.windows},
           "wall_s": round(time.time() - t0, 1)}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
