"""The LPM-Bench-mini analyzer: reads behaviour back out of video frames.

Trained in seconds on the world's own labelled renders (random characters, scenes, poses,
mouths, blinks and expressions), then applied unchanged to any system's output. Each label
has a ridge-regression head on features from a fixed region of the 128x128 frame (frames of
another size are resampled first):

============  ================================  ==============================
label         region                            head
============  ================================  ==============================
mouth_open    lower face crop                   regression, clipped to [0, 1]
mouth_shape   lower face crop                   4-way one-vs-rest ridge
eye_open      eye band                          regression
pitch, yaw    whole face, 32x32                 regression (degrees)
expression    face + eyes + mouth               4-way one-vs-rest ridge
============  ================================  ==============================

Features are pixels relative to the crop's own median colour (so skin tone and light level
cancel to first order) plus their log-ratio. ``identity_features`` is not learned: a colour
thumbnail plus a colour histogram of the central region, compared by Euclidean distance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .character import EXPRESSIONS, MOUTH_SHAPES, Character
from .render import FaceState, Scene, draw, landmarks

__all__ = ["Analyzer", "resize_frames", "identity_features", "training_set"]

SIZE = 128
_FACE_STEP = 8                        # face thumbnail: 16x16 cells of the 128x128 frame
# aligned crops at 128x128: (height, width, step, dy offset of the crop centre from the landmark)
_CROPS = {"mouth": (24, 40, 2, 1), "eyes": (24, 64, 2, -3)}
_HEADS = {  # label -> (feature blocks, kind)
    "mouth_open": (("mouth",), "reg"), "mouth_shape": (("mouth",), "cls"),
    "eye_open": (("eyes",), "reg"), "pitch": (("face",), "reg"), "yaw": (("face",), "reg"),
    "expression": (("face", "eyes", "mouth"), "cls"),
}
_SURPRISE_OPEN = 0.45        # render._EXPR['surprise'] minimum mouth opening
_CLASSES = {"mouth_shape": MOUTH_SHAPES, "expression": EXPRESSIONS}


def resize_frames(frames: np.ndarray, size: int = SIZE) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 -> ``[T, size, size, 3]`` float32 in [0, 1] (area or nearest)."""
    frames = np.asarray(frames)
    t, h, w, _ = frames.shape
    x = frames.astype(np.float32) / 255.0
    if (h, w) == (size, size):
        return x
    if h % size == 0 and w % size == 0:
        fh, fw = h // size, w // size
        return x.reshape(t, size, fh, size, fw, 3).mean(axis=(2, 4))   # (T, size, size, 3)
    ys = ((np.arange(size) + 0.5) * h / size).astype(int)
    xs = ((np.arange(size) + 0.5) * w / size).astype(int)
    return x[:, ys][:, :, xs]


def _relative(c: np.ndarray, step: int) -> tuple:
    """Log of the pooled crop relative to its median colour, and the relative luminance."""
    t, hh, ww, _ = c.shape
    med = np.median(c[:, ::2, ::2].reshape(t, -1, 3), axis=1)[:, None, None, :] + 0.02  # (T,1,1,3)
    small = c.reshape(t, hh // step, step, ww // step, step, 3).mean(axis=(2, 4))
    return np.log(small / med + 0.05).reshape(t, -1), c.mean(-1) / med.mean(-1), med


def _blob_moments(m: np.ndarray) -> np.ndarray:
    """Area and spread of a soft mask ``[T, h, w]``: shift-invariant shape statistics."""
    t, hh, ww = m.shape
    yy = np.arange(hh, dtype=np.float32)[None, :, None]
    xx = np.arange(ww, dtype=np.float32)[None, None, :]
    area = m.sum(axis=(1, 2)) + 1e-3
    my = (m * yy).sum(axis=(1, 2)) / area
    mx = (m * xx).sum(axis=(1, 2)) / area
    sy = np.sqrt((m * (yy - my[:, None, None]) ** 2).sum(axis=(1, 2)) / area)
    sx = np.sqrt((m * (xx - mx[:, None, None]) ** 2).sum(axis=(1, 2)) / area)
    a = area / (hh * ww)
    return np.stack([np.sqrt(a), a, sy, sx, sy / (sx + 1.0), np.sqrt(a) * sy], axis=1)


def _face_features(x: np.ndarray) -> np.ndarray:
    rel, _, med = _relative(x, _FACE_STEP)
    return np.concatenate([rel, med.reshape(len(x), 3)], axis=1).astype(np.float32)


def _aligned_crop(x: np.ndarray, centres: np.ndarray, name: str) -> np.ndarray:
    """Crop ``_CROPS[name]`` around per-frame centres ``[T, 2]`` (x, y), edge-clamped."""
    hh, ww, _, dy = _CROPS[name]
    t = len(x)
    cx = np.round(centres[:, 0]).astype(np.int64)
    cy = np.round(centres[:, 1] + dy).astype(np.int64)
    ys = np.clip(cy[:, None] - hh // 2 + np.arange(hh)[None, :], 0, SIZE - 1)    # (T, hh)
    xs = np.clip(cx[:, None] - ww // 2 + np.arange(ww)[None, :], 0, SIZE - 1)    # (T, ww)
    return x[np.arange(t)[:, None, None], ys[:, :, None], xs[:, None, :]]        # (T, hh, ww, 3)


def _crop_features(c: np.ndarray, name: str) -> np.ndarray:
    rel, lum, med = _relative(c, _CROPS[name][2])
    dark = np.clip((0.5 - lum) * 4.0, 0.0, 1.0)                       # mouth interior, pupils
    white = np.clip((c.min(-1) / (med.max(-1) + 0.02) - 0.9) * 5.0, 0.0, 1.0)   # teeth, eye whites
    return np.concatenate([rel, _blob_moments(dark), _blob_moments(white)], axis=1).astype(np.float32)


def identity_features(frames: np.ndarray) -> np.ndarray:
    """Appearance embedding ``[T, 256]``: 8x8 colour thumbnail + 4x4x4 colour histogram."""
    x = resize_frames(frames)[:, 16:112, 16:112]                             # (T, 96, 96, 3)
    t = len(x)
    thumb = x.reshape(t, 8, 12, 8, 12, 3).mean(axis=(2, 4)).reshape(t, -1)   # (T, 192)
    q = np.minimum((x * 4).astype(np.int64), 3)
    idx = (q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).reshape(t, -1)
    hist = np.stack([np.bincount(r, minlength=64) for r in idx]).astype(np.float32) / idx.shape[1]
    return np.concatenate([thumb, 2.0 * np.sqrt(hist)], axis=1)


class _Ridge:
    def __init__(self, lam: float):
        self.lam = lam

    def fit(self, X, Y):
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-4
        Z = (X - self.mu) / self.sd
        self.ymu = Y.mean(0)
        A = Z.T @ Z + self.lam * len(Z) * np.eye(Z.shape[1], dtype=np.float64)
        self.W = np.linalg.solve(A, Z.T @ (Y - self.ymu)).astype(np.float32)
        return self

    def predict(self, X):
        return ((X - self.mu) / self.sd) @ self.W + self.ymu


def training_set(n: int, seed: int, size: int = SIZE):
    """``n`` random labelled renders: (frames [n, size, size, 3] uint8, labels dict).

    Labels include the landmark positions ``mouth_xy`` and ``eyes_xy`` (pixels at ``size``)."""
    rng = np.random.default_rng([int(seed), 0xA7])
    chars = [Character.random(int(s)) for s in rng.integers(0, 2 ** 30, max(n // 20, 4))]
    scenes = [Scene.random(int(s)) for s in rng.integers(0, 2 ** 30, max(n // 20, 4))]
    frames = np.empty((n, size, size, 3), np.uint8)
    keys = ("mouth_open", "mouth_shape", "eye_open", "pitch", "yaw", "expression")
    lab = {k: [] for k in keys + ("mouth_xy", "eyes_xy")}
    for i in range(n):
        mo = 0.0 if rng.uniform() < 0.3 else float(rng.uniform(0, 1))
        st = FaceState(yaw=float(rng.uniform(-18, 18)), pitch=float(rng.uniform(-6, 14)),
                       roll=float(rng.uniform(-3, 3)), mouth_open=mo,
                       mouth_shape=str(MOUTH_SHAPES[rng.integers(4)] if mo > 0.1 else "rest"),
                       eye_open=float(rng.choice([1.0, rng.uniform(0, 1)], p=[0.6, 0.4])),
                       gaze_x=float(rng.uniform(-0.8, 0.8)), gaze_y=float(rng.uniform(-0.5, 0.3)),
                       expression=str(EXPRESSIONS[rng.integers(4)]),
                       intensity=float(rng.uniform(0.7, 1.0)), light=float(rng.uniform(0.9, 1.1)))
        ch = chars[rng.integers(len(chars))]
        frames[i] = draw(ch, scenes[rng.integers(len(scenes))], st, size, size)
        for k in keys:
            lab[k].append(getattr(st, k))
        if st.expression == "surprise":    # a surprised face holds its mouth open: label what shows
            lab["mouth_open"][-1] = max(mo, _SURPRISE_OPEN * st.intensity)
        lm = landmarks(ch, st, size, size)
        lab["mouth_xy"].append(lm["mouth"])
        lab["eyes_xy"].append(lm["eyes"])
    return frames, {k: np.asarray(v) for k, v in lab.items()}


@dataclass
class Analyzer:
    """Stage 1: landmarks (mouth, eyes) and head pose from a face thumbnail. Stage 2: crops
    aligned on those landmarks feed one ridge head per label."""

    landmark: _Ridge
    heads: dict

    @staticmethod
    def _blocks(x: np.ndarray, landmark: _Ridge) -> dict:
        face = _face_features(x)
        lm = landmark.predict(face)                                    # (T, 4): mouth xy, eyes xy
        return {"face": face, "mouth": _crop_features(_aligned_crop(x, lm[:, :2], "mouth"), "mouth"),
                "eyes": _crop_features(_aligned_crop(x, lm[:, 2:], "eyes"), "eyes")}

    @staticmethod
    @functools.lru_cache(maxsize=2)
    def train(n: int = 2000, seed: int = 0, lam: float = 0.05) -> "Analyzer":
        """Fit on ``n`` fresh renders (cached per process: same arguments, same analyzer)."""
        frames, lab = training_set(n, seed)
        x = resize_frames(frames)
        landmark = _Ridge(0.001).fit(_face_features(x).astype(np.float64),
                                   np.concatenate([lab["mouth_xy"], lab["eyes_xy"]], axis=1))
        blocks = Analyzer._blocks(x, landmark)
        heads = {}
        for name, (names, kind) in _HEADS.items():
            X = np.concatenate([blocks[b] for b in names], axis=1).astype(np.float64)
            if kind == "reg":
                Y = lab[name].astype(np.float64)[:, None]
            else:
                Y = (lab[name][:, None] == np.array(_CLASSES[name])[None, :]).astype(np.float64)
            heads[name] = _Ridge(lam).fit(X, Y)
        return Analyzer(landmark, heads)

    def predict(self, frames: np.ndarray, batch: int = 256) -> dict:
        """Per-frame measurements of ``[T, H, W, 3]`` uint8 frames of any size."""
        out = {k: [] for k in _HEADS}
        for i in range(0, len(frames), batch):
            blocks = self._blocks(resize_frames(frames[i:i + batch]), self.landmark)
            for name, (names, kind) in _HEADS.items():
                p = self.heads[name].predict(np.concatenate([blocks[b] for b in names], axis=1))
                if kind == "reg":
                    p = p[:, 0]
                    if name in ("mouth_open", "eye_open"):
                        p = np.clip(p, 0.0, 1.0)
                    out[name].append(p.astype(np.float32))
                else:
                    out[name].append(np.array(_CLASSES[name])[np.argmax(p, axis=1)])
        return {k: np.concatenate(v) for k, v in out.items()}

    def evaluate(self, frames: np.ndarray, labels: dict) -> dict:
        """Accuracy per label on labelled frames: correlation and MAE for regressions,
        accuracy for classes; blink as a classification of ``eye_open < 0.5``."""
        p = self.predict(frames)
        res = {}
        for name, (_, kind) in _HEADS.items():
            y = np.asarray(labels[name])
            if kind == "reg":
                yf = y.astype(np.float64)
                res[name] = {"corr": _corr(p[name], yf), "mae": float(np.mean(np.abs(p[name] - yf)))}
            else:
                m = np.ones(len(y), bool)
                if name == "mouth_shape":   # shape is only defined while the mouth is open
                    m = np.asarray(labels["mouth_open"]) > 0.25
                res[name] = {"acc": float(np.mean(p[name][m] == y[m])) if m.any() else None}
        yb = np.asarray(labels["eye_open"]) < 0.5
        res["blink"] = {"acc": float(np.mean((p["eye_open"] < 0.5) == yb))}
        return res


def _corr(a, b) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() < 1e-6 or b.std() < 1e-6:
        return None
    return float(np.corrcoef(a, b)[0, 1])
