"""2.5-D drawing of a character: a head ellipsoid whose features sit at (azimuth, elevation)
and are projected orthographically under yaw/pitch/roll, over a body, a background and a light.

``draw(character, scene, state, height, width)`` draws one frame; :func:`render_reference`
and :func:`render_video` are the public entry points built on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import raster as R
from .character import EXPRESSIONS, VIEWS, Character

__all__ = ["FaceState", "Scene", "draw", "landmarks", "render_reference", "render_video"]


@dataclass
class FaceState:
    """Everything that varies per frame. Angles in degrees; pitch > 0 tips the head down (a nod)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    mouth_open: float = 0.0          # 0 closed .. 1 widest
    mouth_shape: str = "rest"        # one of character.MOUTH_SHAPES
    eye_open: float = 1.0            # 1 open .. 0 closed (blink)
    gaze_x: float = 0.0              # -1 .. 1, screen left .. right
    gaze_y: float = 0.0              # -1 up .. 1 down
    expression: str = "neutral"
    intensity: float = 1.0           # 0..1 strength of the expression
    light: float = 1.0               # global light gain multiplier (slow drift over a video)


@dataclass(frozen=True)
class Scene:
    """Background and lighting of one video (or one set of reference images)."""

    seed: int
    bg_top: tuple
    bg_bottom: tuple
    panel: tuple                     # a lighter rectangle (window / poster) in the background
    panel_box: tuple                 # (x0, y0, x1, y1) as fractions of the frame
    light_dir: float                 # angle of the light in the image plane, radians
    light_strength: float            # shading ramp slope
    tint: tuple                      # colour of the light
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def random(seed: int) -> "Scene":
        rng = np.random.default_rng([int(seed), 0xB6])
        base = rng.uniform(0.15, 0.85, 3)
        top = np.clip(base * rng.uniform(0.8, 1.2, 3), 0, 1)
        bottom = np.clip(base * rng.uniform(0.5, 0.9), 0, 1)
        panel = np.clip(top + rng.uniform(0.05, 0.3), 0, 1)
        x0, y0 = rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.5)
        box = (x0, y0, x0 + rng.uniform(0.15, 0.3), y0 + rng.uniform(0.15, 0.35))
        tint = 1.0 + rng.uniform(-0.08, 0.08, 3)
        return Scene(int(seed), tuple(map(float, top)), tuple(map(float, bottom)),
                     tuple(map(float, panel)), tuple(map(float, box)),
                     float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.05, 0.3)),
                     tuple(map(float, tint)))

    def background(self, h: int, w: int) -> np.ndarray:
        """The static backdrop ``[h, w, 3]`` float32, drawn once per size and cached."""
        key = (h, w)
        if key not in self._cache:
            t = (np.arange(h, dtype=np.float32)[:, None, None] + 0.5) / h       # (h, 1, 1)
            img = (1 - t) * np.float32(self.bg_top) + t * np.float32(self.bg_bottom)
            img = np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)), dtype=np.float32)
            x0, y0, x1, y1 = self.panel_box
            pts = np.array([[x0 * w, y0 * h], [x1 * w, y0 * h], [x1 * w, y1 * h], [x0 * w, y1 * h]])
            box, a = R.polygon(h, w, pts)
            R.composite(img, box, a, self.panel, opacity=0.6)
            self._cache[key] = img
        return self._cache[key]


_EXPR = {  # eye opening, brow raise, brow tilt, mouth curve (+ smile), minimum mouth opening, blush
    "neutral": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "smile": (0.72, 0.02, 0.0, 1.0, 0.0, 0.35),
    "surprise": (1.35, 0.09, 0.0, 0.0, 0.45, 0.0),
    "sad": (0.8, 0.01, 0.35, -0.8, 0.0, 0.0),
}
_SHAPE_W = {"rest": 1.0, "open": 0.95, "wide": 1.18, "round": 0.62}   # mouth width per shape
_SHAPE_H = {"rest": 1.0, "open": 1.0, "wide": 0.7, "round": 1.05}     # opening height per shape


class _Head:
    """Projection of (azimuth, elevation) on the head ellipsoid to screen pixels."""

    def __init__(self, cx, cy, rx, ry, yaw, pitch, roll):
        self.cx, self.cy, self.rx, self.ry = cx, cy, rx, ry
        self.yaw, self.pitch = math.radians(yaw), math.radians(pitch)
        self.roll = math.radians(roll)
        self.cr, self.sr = math.cos(self.roll), math.sin(self.roll)

    def proj(self, az, el, out=0.0):
        """Screen (x, y) and facing (cos of the angle to the viewer) of a surface point.

        ``out`` pushes the point outward along the surface normal (noses, ears), in units of rx.
        """
        a = az + self.yaw
        e = el - self.pitch
        r = 1.0 + out
        x = self.rx * r * math.sin(a) * math.cos(e)
        y = -self.ry * (r if out else 1.0) * math.sin(e)
        return (self.cx + x * self.cr - y * self.sr, self.cy + x * self.sr + y * self.cr,
                math.cos(a) * math.cos(e))


def _head_for(ch: Character, st: FaceState, h: int, w: int) -> _Head:
    s = float(min(h, w))
    rx, ry = ch.head_w * s, ch.head_h * s
    cx = w / 2 + 0.06 * rx * math.sin(math.radians(st.yaw)) + 0.5 * rx * math.sin(math.radians(st.roll))
    cy = h * 0.44 + 0.25 * ry * math.sin(math.radians(st.pitch))
    return _Head(cx, cy, rx, ry, st.yaw, st.pitch, st.roll)


def landmarks(ch: Character, st: FaceState, h: int, w: int) -> dict:
    """Pixel positions of the mouth centre and the midpoint between the eyes (x, y)."""
    hd = _head_for(ch, st, h, w)
    mx, my, _ = hd.proj(0.0, -0.5)
    lx, ly, _ = hd.proj(-ch.eye_spacing, 0.1)
    rx, ry, _ = hd.proj(ch.eye_spacing, 0.1)
    return {"mouth": (mx, my), "eyes": ((lx + rx) / 2, (ly + ry) / 2)}


def mouth_opening(st: FaceState) -> float:
    """The opening :func:`draw` gives the mouth: the state's, or the expression's minimum (a
    surprised face holds its mouth open)."""
    return max(st.mouth_open, _EXPR[st.expression][4] * st.intensity)


def draw(ch: Character, scene: Scene, st: FaceState, h: int, w: int) -> np.ndarray:
    """One frame ``[h, w, 3]`` uint8 of ``ch`` in ``scene`` with the per-frame state ``st``."""
    img = scene.background(h, w).copy()
    s = float(min(h, w))
    eye_k, brow_up, brow_tilt, curve, min_open, blush = _EXPR[st.expression]
    k = st.intensity
    eye_k, brow_up, brow_tilt = 1 + (eye_k - 1) * k, brow_up * k, brow_tilt * k
    curve, min_open, blush = curve * k, min_open * k, blush * k
    hd = _head_for(ch, st, h, w)
    cx, cy, rx, ry = hd.cx, hd.cy, hd.rx, hd.ry
    lc, ls = math.cos(scene.light_dir), math.sin(scene.light_dir)
    shade_head = (cx, cy, scene.light_strength * lc, scene.light_strength * ls, rx)
    skin = np.float32(ch.skin)
    hair = np.float32(ch.hair)
    syaw = math.sin(hd.yaw)

    # --- behind the head: long hair, body, neck ---------------------------------------
    if ch.hair_style in ("long", "curly"):
        grow = 1.22 if ch.hair_style == "curly" else 1.12
        b, a = R.ellipse(h, w, cx - 0.25 * rx * syaw, cy + 0.3 * ry, rx * grow, ry * 1.1)
        R.composite(img, b, a, hair * 0.85)
    bx = w / 2 + 0.15 * rx * syaw
    b, a = R.ellipse(h, w, bx, cy + ry + 0.36 * s, 0.42 * s, 0.28 * s)
    R.composite(img, b, a, ch.shirt, shade=(bx, cy + ry + 0.3 * s, 0.5 * lc, 0.5 * ls, s))
    ny = cy + ry + 0.1 * s
    if ch.collar == "stripe":
        b, a = R.ring(h, w, bx, cy + ry + 0.36 * s, 0.36 * s, 0.22 * s, 0.03 * s)
        R.composite(img, b, a, ch.shirt2)
    elif ch.collar == "round":
        b, a = R.ellipse(h, w, bx, ny, 0.2 * rx * 1.4 + 0.03 * s, 0.12 * s)
        R.composite(img, b, a, ch.shirt2)
    else:
        pts = [[bx - 0.55 * rx, ny - 0.02 * s], [bx + 0.55 * rx, ny - 0.02 * s], [bx, ny + 0.14 * s]]
        b, a = R.polygon(h, w, np.array(pts))
        R.composite(img, b, a, ch.shirt2)
    nw = 0.42 * rx
    pts = [[cx - nw, cy + 0.5 * ry], [cx + nw, cy + 0.5 * ry], [bx + nw, ny + 0.02 * s],
           [bx, ny + 0.07 * s], [bx - nw, ny + 0.02 * s]]
    b, a = R.polygon(h, w, np.array(pts))
    R.composite(img, b, a, skin * 0.82, shade=shade_head)

    # --- ears (behind the head when at the silhouette, on top of it when facing us) ------
    ears = []
    for side in (-1.0, 1.0):
        ex, ey, f = hd.proj(side * math.pi / 2, 0.0, out=0.06)
        if f > -0.45:
            ears.append((f, ex, ey))
    def _ear(ex, ey, f):
        b, a = R.ellipse(h, w, ex, ey, rx * (0.09 + 0.14 * max(f, 0.0)), ry * 0.22, hd.roll)
        R.composite(img, b, a, skin * 0.9, shade=shade_head)
        if ch.earrings:
            b, a = R.ellipse(h, w, ex, ey + ry * 0.25, 0.035 * s, 0.035 * s)
            R.composite(img, b, a, (0.95, 0.78, 0.2))
    for f, ex, ey in ears:
        if f <= 0.3:
            _ear(ex, ey, f)

    # --- head, jaw, hair --------------------------------------------------------------
    b, a = R.ellipse(h, w, cx, cy, rx, ry, hd.roll)
    R.composite(img, b, a, skin, shade=shade_head)
    jx, jy, _ = hd.proj(0.0, -0.55)
    jx = cx + 0.3 * (jx - cx)           # the jaw's centre is inside the skull: it swings less
    b, a = R.ellipse(h, w, jx, jy, rx * (0.72 + 0.2 * ch.jaw), ry * 0.5, hd.roll)
    R.composite(img, b, a, skin, shade=shade_head)
    for f, ex, ey in ears:
        if f > 0.3:
            _ear(ex, ey, f)
    if ch.hair_style != "bald":
        grow = 1.15 if ch.hair_style == "curly" else 1.06
        hx = cx - 0.1 * rx * syaw
        b = R._box_for_ellipse(h, w, hx, cy - 0.05 * ry, rx * grow, ry * 1.05, hd.roll)
        if not b.empty:
            vol = R.coverage(R.ellipse_sd(b, hx, cy - 0.05 * ry, rx * grow, ry * 1.05, hd.roll))
            # hairline: a plane tilted with the head; hair also covers the back/sides of the skull
            hl = 0.75 - 0.6 * ch.hairline
            py = cy - ry * hl * math.cos(hd.pitch)
            fringe = R.coverage(R.halfplane_sd(b, cx, py, -hd.sr, hd.cr))
            u = np.clip((b.xs - cx) / rx, -1.0, 1.0)                         # (1, bw)
            az = np.arcsin(u) - hd.yaw                                      # surface azimuth
            side = np.clip((np.abs(az) - 1.3) * 2.0, 0.0, 1.0)
            side = side * np.clip((cy + 0.3 * ry - b.ys) / (0.25 * ry), 0.0, 1.0)
            R.composite(img, b, vol * np.maximum(fringe, side), hair, shade=shade_head)
        if ch.hair_style == "bun":
            bx_, by_, _ = hd.proj(-0.4 * math.copysign(1, syaw) if abs(syaw) > 0.2 else 0.0, 1.2)
            b, a = R.ellipse(h, w, bx_, by_ - 0.1 * ry, 0.4 * rx, 0.32 * ry)
            R.composite(img, b, a, hair, shade=shade_head)

    # --- eyes and brows -----------------------------------------------------------------
    re = 0.17 * rx * ch.eye_size
    open_ = max(st.eye_open, 0.0) * eye_k
    for side in (-1.0, 1.0):
        az = side * ch.eye_spacing
        ex, ey, f = hd.proj(az, 0.1)
        if f < 0.15:
            continue
        fx = max(f, 0.2) ** 0.8
        erx, ery = re * fx, re * 0.62 * open_
        if ery > 0.45:
            b = R._box_for_ellipse(h, w, ex, ey, erx, ery, hd.roll)
            if not b.empty:
                white = R.coverage(R.ellipse_sd(b, ex, ey, erx, ery, hd.roll))
                R.composite(img, b, white, (0.95, 0.95, 0.93))
                ix = ex + st.gaze_x * 0.45 * erx + re * 0.5 * math.sin(hd.yaw) * 0.3
                iy = ey + st.gaze_y * 0.3 * re
                iris = R.coverage(R.ellipse_sd(b, ix, iy, 0.55 * re * fx, 0.55 * re, hd.roll)) * white
                R.composite(img, b, iris, ch.eye_color)
                pupil = R.coverage(R.ellipse_sd(b, ix, iy, 0.25 * re * fx, 0.25 * re)) * white
                R.composite(img, b, pupil, (0.02, 0.02, 0.02))
            b, a = R.ring(h, w, ex, ey, erx, max(ery, 0.3), 0.09 * re + 0.5, hd.roll)
            R.composite(img, b, a, skin * 0.35)
        else:   # closed lid: a lash line
            b, a = R.ellipse(h, w, ex, ey, erx, 0.5 + 0.06 * re, hd.roll)
            R.composite(img, b, a, skin * 0.3)
        bx_, by_, _ = hd.proj(side * ch.eye_spacing * 1.05, 0.28 + brow_up)
        ang = hd.roll - side * brow_tilt + (0.08 * side if curve > 0.5 else 0.0)
        b, a = R.ellipse(h, w, bx_, by_, 1.25 * re * fx, 0.022 * ry * ch.brow_thickness + 0.4, ang)
        R.composite(img, b, a, hair * 0.75)
        if blush > 0:
            cx_, cy_, f2 = hd.proj(side * 0.55, -0.22)
            if f2 > 0.1:
                b, a = R.ellipse(h, w, cx_, cy_, 1.1 * re * max(f2, 0.3), 0.7 * re)
                R.composite(img, b, a, (0.95, 0.45, 0.45), opacity=blush)
        if ch.glasses:
            b, a = R.ring(h, w, ex, ey, 1.45 * re * fx, 1.15 * re, 0.04 * re + 0.6, hd.roll)
            R.composite(img, b, a, ch.glasses_color)
    if ch.glasses:
        x0, y0, f0 = hd.proj(-ch.eye_spacing + 0.2, 0.12)
        x1, y1, f1 = hd.proj(ch.eye_spacing - 0.2, 0.12)
        if min(f0, f1) > 0.1:
            t = 0.03 * re + 0.4
            b, a = R.polygon(h, w, np.array([[x0, y0 - t], [x1, y1 - t], [x1, y1 + t], [x0, y0 + t]]))
            R.composite(img, b, a, ch.glasses_color)

    # --- nose -------------------------------------------------------------------------
    tx, ty, f = hd.proj(0.0, -0.2, out=0.3 * ch.nose_len)
    rx0, ry0, _ = hd.proj(0.0, 0.02)
    lx, ly, _ = hd.proj(-0.12, -0.24)
    rx1, ry1, _ = hd.proj(0.12, -0.24)
    b, a = R.polygon(h, w, np.array([[rx0, ry0], [tx, ty], [rx1, ry1], [lx, ly]]))
    R.composite(img, b, a, skin * 0.86, shade=shade_head)
    b, a = R.ellipse(h, w, (lx + rx1) / 2 * 0.7 + tx * 0.3, ly, 0.09 * rx * max(f, 0.3), 0.03 * ry + 0.3)
    R.composite(img, b, a, skin * 0.55, opacity=0.8)

    # --- mouth --------------------------------------------------------------------------
    _mouth(img, ch, hd, st, curve, min_open)

    # --- light: slow global drift and a coloured tint ---------------------------------
    img *= np.float32(st.light) * np.float32(scene.tint)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_KS = np.linspace(-1.0, 1.0, 11)


def _mouth(img, ch, hd: _Head, st: FaceState, curve: float, min_open: float):
    h, w = img.shape[:2]
    ry = hd.ry
    shape = st.mouth_shape
    op = max(st.mouth_open, min_open)
    half = ch.mouth_w * _SHAPE_W[shape] * (1.0 - 0.25 * op * (shape == "round"))
    pts = np.array([hd.proj(k * half, -0.5) for k in _KS])        # (11, 3) centre line
    f = pts[:, 2]
    if f.max() < 0.05:
        return
    xs, ys = pts[:, 0], pts[:, 1]
    env = (1.0 - _KS ** 2) ** 0.7                                  # (11,) lip profile
    ys = ys - curve * 0.07 * ry * _KS ** 2 + curve * 0.02 * ry    # corners up for a smile
    opening = op * 0.26 * ry * _SHAPE_H[shape]
    lip = 0.045 * ry + 0.3
    up = ys - (0.45 * opening + lip) * env
    lo = ys + (0.55 * opening + 1.2 * lip) * env
    vis = f > -0.05
    xs, up, lo, ysv = xs[vis], up[vis], lo[vis], ys[vis]
    envv = env[vis]
    if len(xs) < 2:
        return
    b, a = R.polygon(h, w, np.concatenate([np.stack([xs, up], 1), np.stack([xs, lo], 1)[::-1]]))
    R.composite(img, b, a, ch.lip)
    if opening > 0.4:
        iu = ysv - 0.45 * opening * envv
        il = ysv + 0.55 * opening * envv
        b, a = R.polygon(h, w, np.concatenate([np.stack([xs, iu], 1), np.stack([xs, il], 1)[::-1]]))
        R.composite(img, b, a, (0.22, 0.04, 0.06))
        teeth = iu + np.minimum(0.3 * opening, 0.06 * ry) * envv
        b, a = R.polygon(h, w, np.concatenate([np.stack([xs, iu], 1), np.stack([xs, teeth], 1)[::-1]]))
        R.composite(img, b, a, (0.93, 0.92, 0.88))
    else:
        seam = 0.35 + 0.3 * opening
        b, a = R.polygon(h, w, np.concatenate([np.stack([xs, ysv - seam * envv], 1),
                                               np.stack([xs, ysv + seam * envv], 1)[::-1]]))
        R.composite(img, b, a, np.float32(ch.lip) * 0.45)


def render_reference(character: Character, view: str = "front", expression: str = "neutral",
                     size: int | tuple = 128, scene: Scene | None = None) -> np.ndarray:
    """A still of ``character`` seen from ``view`` (see ``VIEWS``) with ``expression``.

    ``size``: an int (square) or ``(height, width)``. ``scene`` defaults to the character's
    own studio backdrop (a function of its seed). Returns ``[H, W, 3]`` uint8.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; known: {', '.join(EXPRESSIONS)}")
    hh, ww = (size, size) if isinstance(size, int) else size
    scene = scene or Scene.random(character.seed + 7919)
    st = FaceState(yaw=VIEWS[view], expression=expression)
    return draw(character, scene, st, hh, ww)


def states_from_labels(labels: dict) -> list:
    """Per-frame :class:`FaceState` from a label dict of equal-length sequences."""
    n = len(labels["mouth_open"])
    return [FaceState(yaw=float(labels["yaw"][i]), pitch=float(labels["pitch"][i]),
                      roll=float(labels["roll"][i]), mouth_open=float(labels["mouth_open"][i]),
                      mouth_shape=str(labels["mouth_shape"][i]), eye_open=float(labels["eye_open"][i]),
                      gaze_x=float(labels["gaze_x"][i]), gaze_y=float(labels["gaze_y"][i]),
                      expression=str(labels["expression"][i]),
                      intensity=float(labels["intensity"][i]), light=float(labels["light"][i]))
            for i in range(n)]


def render_video(character: Character, labels: dict, scene: Scene | None = None,
                 size: int | tuple = 128) -> np.ndarray:
    """Render every frame the labels describe: ``[T, H, W, 3]`` uint8.

    ``size`` is an int (square) or ``(height, width)``; any multiple of 16 works.
    """
    hh, ww = (size, size) if isinstance(size, int) else size
    scene = scene or Scene.random(character.seed + 7919)
    states = states_from_labels(labels)
    out = np.empty((len(states), hh, ww, 3), np.uint8)
    for i, st in enumerate(states):
        out[i] = draw(character, scene, st, hh, ww)
    return out
