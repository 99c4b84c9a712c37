"""Built-in assets: the default character (drawn procedurally, so nothing binary is needed)."""

from __future__ import annotations

import numpy as np

__all__ = ["default_character"]


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
