"""Characters of the synthetic world: identity parameters drawn from a seed.

A :class:`Character` is pure data (frozen, JSON-serialisable); :mod:`lpm_rt.world.render`
draws it. Identity = everything that must stay fixed for a character across views,
expressions, lighting and minutes of video: head shape, skin, hair, eyes, accessories,
clothing colours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Character", "VIEWS", "EXPRESSIONS", "MOUTH_SHAPES", "HAIR_STYLES", "TAG_TO_EXPRESSION"]

# view name -> head yaw in degrees (positive: the character turns to the viewer's right)
VIEWS = {"front": 0.0, "three_quarter_left": -40.0, "three_quarter_right": 40.0, "profile": 80.0}
EXPRESSIONS = ("neutral", "smile", "surprise", "sad")
MOUTH_SHAPES = ("rest", "open", "wide", "round")
HAIR_STYLES = ("bald", "short", "long", "bun", "curly")
# prompt tag -> expression drawn; tags outside this table leave the face neutral
TAG_TO_EXPRESSION = {
    "calm": "neutral", "neutral": "neutral", "smile": "smile", "happy": "smile",
    "surprised": "surprise", "surprise": "surprise", "sad": "sad",
}

_SKIN = np.array([[0.96, 0.80, 0.69], [0.90, 0.72, 0.58], [0.78, 0.57, 0.42],
                  [0.62, 0.43, 0.30], [0.45, 0.30, 0.20], [0.33, 0.22, 0.15]], np.float32)
_HAIR = np.array([[0.08, 0.06, 0.05], [0.28, 0.17, 0.09], [0.55, 0.35, 0.16], [0.85, 0.70, 0.40],
                  [0.60, 0.20, 0.08], [0.70, 0.70, 0.72], [0.30, 0.30, 0.55]], np.float32)
_IRIS = np.array([[0.30, 0.18, 0.08], [0.15, 0.35, 0.60], [0.25, 0.45, 0.25], [0.45, 0.35, 0.20],
                  [0.10, 0.08, 0.06]], np.float32)


def _rgb(v) -> tuple:
    return tuple(float(round(x, 4)) for x in np.clip(v, 0.0, 1.0))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


@dataclass(frozen=True)
class Character:
    """Identity parameters. Lengths are fractions of the frame size; colours RGB in [0, 1]."""

    seed: int
    head_w: float            # head half-width
    head_h: float            # head half-height
    jaw: float               # 0 round .. 1 square-ish (a wider lower face)
    skin: tuple
    hair: tuple
    hair_style: str
    hairline: float          # how far the hair comes down the forehead (0..1)
    eye_color: tuple
    eye_size: float          # multiplier on the eye radius
    eye_spacing: float       # azimuth of each eye, radians
    brow_thickness: float
    nose_len: float
    mouth_w: float           # mouth half-width as a fraction of head_w
    lip: tuple
    glasses: bool
    glasses_color: tuple
    earrings: bool
    shirt: tuple
    shirt2: tuple            # collar / stripe colour
    collar: str              # "v", "round", "stripe"

    @staticmethod
    def random(seed: int) -> "Character":
        """A character whose every parameter is a function of ``seed`` alone."""
        rng = np.random.default_rng([int(seed), 0x5EED])
        skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.94, 1.06, 3)
        hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15, 3)
        shirt = _hsv(rng.uniform(), rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.95))
        shirt2 = _hsv(rng.uniform(), rng.uniform(0.0, 0.8), rng.uniform(0.5, 1.0))
        lip = np.clip(skin * np.array([0.95, 0.62, 0.6]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
        return Character(
            seed=int(seed),
            head_w=float(rng.uniform(0.17, 0.215)), head_h=float(rng.uniform(0.22, 0.26)),
            jaw=float(rng.uniform(0.0, 1.0)),
            skin=_rgb(skin), hair=_rgb(hair),
            hair_style=str(HAIR_STYLES[rng.integers(len(HAIR_STYLES))]),
            hairline=float(rng.uniform(0.35, 0.75)),
            eye_color=_rgb(_IRIS[rng.integers(len(_IRIS))]),
            eye_size=float(rng.uniform(0.85, 1.2)), eye_spacing=float(rng.uniform(0.33, 0.43)),
            brow_thickness=float(rng.uniform(0.6, 1.4)), nose_len=float(rng.uniform(0.7, 1.3)),
            mouth_w=float(rng.uniform(0.30, 0.40)), lip=_rgb(lip),
            glasses=bool(rng.uniform() < 0.3), glasses_color=_rgb(rng.uniform(0.0, 0.5, 3)),
            earrings=bool(rng.uniform() < 0.3),
            shirt=_rgb(shirt), shirt2=_rgb(shirt2),
            collar=str(("v", "round", "stripe")[rng.integers(3)]),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Character":
        d = dict(d)
        for k in ("skin", "hair", "eye_color", "lip", "glasses_color", "shirt", "shirt2"):
            d[k] = tuple(d[k])
        return Character(**d)
