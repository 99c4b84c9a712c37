"""Built-in assets: the default character (drawn procedurally, so nothing binary is needed)."""

from __future__ import annotations

import numpy as np

__all__ = ["default_character", "builtin_speech"]


def _ellipse(h, w, cy, cx, ry, rx):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    d = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    return np.clip((1.0 - d) * min(ry, rx) / 2, 0, 1)[..., None]   # ~1 px antialiased edge


def default_character(height: int, width: int) -> list:
    """One `global` reference of the default character: HxWx3 uint8, front view, neutral."""
    try:                       # the synthetic world draws richer characters when present
        from ..world import Character, render_reference
        return [render_reference(Character.random(7), size=(height, width))]
    except Exception:
        pass
    h, w = height, width
    img = np.zeros((h, w, 3), np.float32) + np.array([70, 90, 120], np.float32)
    layers = [
        ((0.95 * h, 0.5 * w, 0.30 * h, 0.38 * w), (60, 110, 170)),    # shoulders / shirt
        ((0.47 * h, 0.5 * w, 0.30 * h, 0.23 * w), (90, 60, 40)),      # hair
        ((0.52 * h, 0.5 * w, 0.26 * h, 0.20 * w), (225, 180, 150)),   # face
        ((0.47 * h, 0.41 * w, 0.035 * h, 0.045 * w), (250, 250, 250)),
        ((0.47 * h, 0.59 * w, 0.035 * h, 0.045 * w), (250, 250, 250)),
        ((0.47 * h, 0.41 * w, 0.025 * h, 0.025 * w), (40, 60, 90)),   # eyes
        ((0.47 * h, 0.59 * w, 0.025 * h, 0.025 * w), (40, 60, 90)),
        ((0.66 * h, 0.5 * w, 0.025 * h, 0.07 * w), (150, 60, 60)),    # mouth
    ]
    for (cy, cx, ry, rx), col in layers:
        a = _ellipse(h, w, cy, cx, ry, rx)
        img = img * (1 - a) + np.array(col, np.float32) * a
    return [img.round().clip(0, 255).astype(np.uint8)]


_VOWELS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840), (660, 1720))  # F1, F2 (Hz)


def builtin_speech(seconds: float, seed: int = 0, turn: str = "speaker", rate: int = 24000):
    """Speech-like audio for the demo: syllables at ~4.5 Hz with pitch contours and vowel formants
    (additive synthesis of the glottal harmonics under a two-formant envelope). The two turns
    alternate: the speaker talks for the first 60% of the time, then the listener (the user)
    talks while the avatar listens. Returns (float32 PCM in [-1, 1], rate)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    active = (t < 0.6 * seconds) if turn == "speaker" else (t >= 0.62 * seconds)
    base_f0 = 120.0 if turn == "speaker" else 190.0
    env = np.zeros(n)
    f1, f2 = np.full(n, 500.0), np.full(n, 1500.0)
    pos = 0.0
    while pos < seconds:
        dur = rng.uniform(0.14, 0.28)
        if rng.random() < 0.12:                      # pause between words
            pos += rng.uniform(0.15, 0.35)
            continue
        i0, i1 = int(pos * rate), min(int((pos + dur) * rate), n)
        if i1 > i0:
            env[i0:i1] = np.sin(np.linspace(0, np.pi, i1 - i0)) ** 1.5
            v = _VOWELS[rng.integers(len(_VOWELS))]
            f1[i0:i1], f2[i0:i1] = v
        pos += dur
    env *= active
    f0 = base_f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        gain = 1.0 / k ** 0.5 * (np.exp(-((fk - f1) / 120) ** 2) + 0.6 * np.exp(-((fk - f2) / 180) ** 2) + 0.02)
        out += np.where(fk < rate / 2 - 500, gain, 0) * np.sin(k * phase)
    out = out * env
    out += 0.002 * rng.standard_normal(n)            # room noise floor
    out *= 0.5 / max(np.abs(out).max(), 1e-6)
    return out.astype(np.float32), rate
