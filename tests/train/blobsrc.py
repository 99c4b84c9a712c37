"""A tiny synthetic clip source for the trainer's tests: moving blobs + sine audio.

Independent of lpm_rt.world (which may change): a coloured disc moves over a two-tone
background; its radius follows the speaker track's envelope (a "mouth"); the speaker track is a
sine whose loudness is a slow on/off pattern, the listener track a sine at another pitch.
"""

import numpy as np

from lpm_rt.train.data import Clip

PROMPTS = ("smile", "calm", "sad", "surprised talk")


class BlobSource:
    def __init__(self, cfg, frames, rate=16000):
        self.cfg, self.frames, self.rate = cfg, frames, rate

    def clip(self, index: int) -> Clip:
        s = self.cfg.stream
        rng = np.random.default_rng([index, 11])
        T, H, W, sr = self.frames, s.height, s.width, self.rate
        n = T * sr // s.fps
        lead = sr // 10
        t = np.arange(-lead, n) / sr
        env = (np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6)) > 0).astype(np.float32)
        spk = (0.4 * env * np.sin(2 * np.pi * rng.uniform(150, 300) * t)).astype(np.float32)
        lis = (0.3 * (1 - env) * np.sin(2 * np.pi * rng.uniform(300, 500) * t)).astype(np.float32)
        bg = rng.uniform(0, 255, 3)
        fg = rng.uniform(0, 255, 3)
        yy, xx = np.mgrid[0:H, 0:W]
        cy, cx = rng.uniform(0.3, 0.7) * H, rng.uniform(0.3, 0.7) * W
        vy, vx = rng.uniform(-0.5, 0.5, 2)
        frames = np.empty((T, H, W, 3), np.uint8)
        for i in range(T):
            e = env[lead + i * sr // s.fps]
            r = (0.15 + 0.1 * e) * min(H, W)
            d = ((yy - cy - vy * i) ** 2 + (xx - cx - vx * i) ** 2) < r * r
            img = np.where(d[..., None], fg, bg * (0.6 + 0.4 * yy[..., None] / H))
            frames[i] = img.astype(np.uint8)
        refs = [frames[0].copy(), frames[T // 2].copy()]
        return Clip(frames, spk, lis, sr, refs, ["global", "face_expression"], PROMPTS[index % len(PROMPTS)], lead)


def make(cfg, frames):
    return BlobSource(cfg, frames)
