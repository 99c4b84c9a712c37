"""Plots drawn with numpy into RGB images (no plotting library): grouped bars and line traces.

Colours identify systems/series; the Markdown report written next to the PNGs names them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PALETTE", "bar_panels", "line_traces"]

PALETTE = np.array([[46, 125, 50], [198, 40, 40], [21, 101, 192], [239, 108, 0], [106, 27, 154],
                    [0, 131, 143], [120, 120, 120]], np.uint8)


def _line(img, x0, y0, x1, y1, color):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.clip(np.round(np.linspace(x0, x1, n)).astype(int), 0, img.shape[1] - 1)
    ys = np.clip(np.round(np.linspace(y0, y1, n)).astype(int), 0, img.shape[0] - 1)
    img[ys, xs] = color


def bar_panels(values: np.ndarray, panel_w: int = 120, panel_h: int = 140) -> np.ndarray:
    """``values [metrics, systems]`` (NaN = missing) -> one panel per metric, bars per system.

    Each panel is scaled to its own max |value|; a grey line marks zero."""
    m, s = values.shape
    img = np.full((panel_h, panel_w * m, 3), 255, np.uint8)
    for i in range(m):
        v = values[i]
        scale = np.nanmax(np.abs(v)) if np.isfinite(v).any() else 1.0
        scale = scale if scale > 0 else 1.0
        x0 = i * panel_w
        zero = panel_h // 2 if np.nanmin(np.where(np.isfinite(v), v, 0)) < 0 else panel_h - 10
        bw = (panel_w - 20) // max(s, 1)
        for j in range(s):
            if not np.isfinite(v[j]):
                continue
            hgt = int(round(v[j] / scale * (zero - 10)))
            bx = x0 + 10 + j * bw
            y_a, y_b = sorted((zero, zero - hgt))
            img[y_a:y_b + 1, bx + 2:bx + bw - 2] = PALETTE[j % len(PALETTE)]
        img[zero, x0 + 5:x0 + panel_w - 5] = 128
        img[:, x0 + panel_w - 1] = 200
    return img


def line_traces(series: list, height: int = 80, width: int = 720) -> np.ndarray:
    """Stack one strip per series; each series is a 1-D array drawn in its palette colour,
    scaled to the strip (all series share the time axis)."""
    img = np.full((height * len(series), width, 3), 255, np.uint8)
    for k, y in enumerate(series):
        y = np.asarray(y, np.float64)
        if len(y) < 2:
            continue
        lo, hi = np.nanmin(y), np.nanmax(y)
        yn = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y) + 0.5
        xs = np.linspace(0, width - 1, len(y))
        ys = k * height + (height - 6) - yn * (height - 12)
        for i in range(len(y) - 1):
            _line(img, xs[i], ys[i], xs[i + 1], ys[i + 1], PALETTE[k % len(PALETTE)])
        img[(k + 1) * height - 1] = 200
    return img
