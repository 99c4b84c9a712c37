"""scripts/attention_error_budget.py on small shapes: the error it attributes to each rounding
step adds up the way the kernels' choices assume (fp8 pages dominate; 16-bit dots add nothing
measurable on top; e4m3 Q and P add their own)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import script  # noqa: E402


def test_fp8_pages_dominate_and_16_bit_dots_add_nothing():
    r = script("attention_error_budget").budget(heads=2, queries=128, keys=960)
    pages = r["fp8 pages, exact dots"]
    assert 1e-2 < pages < 1e-1                                        # e4m3's 3 mantissa bits
    assert r["bf16 pages, bf16 Q and P"] < pages / 5
    for k in ("fp8 pages, bf16 Q and P", "fp8 pages, fp16 Q and P (F16_DOTS)"):
        assert abs(r[k] - pages) < 0.05 * pages, (k, r[k], pages)
    assert r["fp8 pages, e4m3 Q and P (FP8_Q)"] > 1.1 * pages
