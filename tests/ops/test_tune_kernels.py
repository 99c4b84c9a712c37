"""The tile sweep (scripts/tune_kernels.py) and the override it launches through, on CPU: the
override reaches the JIT launch and leaves nothing behind; the sweep's smoke runs every mode,
checks each variant against the fp32 reference and picks a fastest correct one per group."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import script  # noqa: E402


def test_override_tiles_reaches_the_jit_launch_and_is_undone(triton_backend):
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel
    from lpm_rt.ops._launch import configure, overridden, override_tiles

    sem = dict(PAGE_SIZE=8, HEAD_DIM=16)
    plain = configure(_paged_attn_fwd_kernel, sem, dict(BLOCK_M=32, BLOCK_N=64), 4, 2)
    with override_tiles(_paged_attn_fwd_kernel, dict(BLOCK_N=16), 8, 3):
        assert overridden(_paged_attn_fwd_kernel)
        got = configure(_paged_attn_fwd_kernel, sem, dict(BLOCK_M=32, BLOCK_N=64), 4, 2)
    assert got.constexprs == dict(PAGE_SIZE=8, HEAD_DIM=16, BLOCK_M=32, BLOCK_N=16)
    assert got.opts == dict(num_warps=8, num_stages=3)
    assert not overridden(_paged_attn_fwd_kernel)
    again = configure(_paged_attn_fwd_kernel, sem, dict(BLOCK_M=32, BLOCK_N=64), 4, 2)
    assert again.constexprs == plain.constexprs and again.opts == dict(num_warps=4, num_stages=2)


def test_sweep_smoke_checks_every_variant(triton_backend, tmp_path):
    out = tmp_path / "tune.json"
    modes = "bf16,fp8kv,fp8kv-bf16,fp8,fp8-vtok,fp8qk"
    assert script("tune_kernels").main(["--smoke", "--modes", modes, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert {(r["op"], r["mode"]) for r in rows} == {
        ("paged_attention", "bf16"), ("paged_attention", "fp8"), ("paged_attention", "fp8kv"),
        ("paged_attention", "fp8kv-bf16"), ("paged_attention", "fp8-vtok"), ("paged_attention", "fp8qk"),
        ("fp8_linear", "promote128"), ("fp8_linear", "fast_accum")}
    assert not [r for r in rows if "error" in r], rows
    for r in rows:
        bound = 0.056 if r["mode"] in ("fp8", "fp8-vtok", "fp8qk") else 1e-2
        assert 0 < r["rel_l2_vs_fp32"] < bound and r["median_ms"] > 0
    assert len(res["best"]) == 9                                       # 8 groups + bf16 at half pages
    attn = [r for r in rows if r["op"] == "paged_attention"]
    assert all(r["F16_DOTS"] == (r["mode"] in ("fp8kv", "fp8qk")) for r in attn)   # fp16 dots (fp8qk: P.V)
    vtok = [r for r in rows if r["mode"] == "fp8-vtok"]
    assert vtok and all(r["PAGE_TILES"] and not r["TMA_KV"] for r in vtok)   # token-contiguous V: page tiles
    assert {r["mode"] for r in rows if r.get("TMA_KV")} == {"bf16", "fp8", "fp8kv", "fp8kv-bf16", "fp8qk"}  # TMA ran
    assert {r["mode"] for r in rows if r.get("OVERLAP")} == set(modes.split(","))   # and OVERLAP, every mode
    assert {r["mode"] for r in rows if r.get("PEEL_LAST")} == set(modes.split(","))
    with pytest.raises(SystemExit):
        script("tune_kernels").main(["--smoke", "--modes", "bf16,fp9"])


def test_sweep_half_pages_compares_overlap_with_the_production_tile(triton_backend, tmp_path):
    """--half-pages: per shape and mode one production-tile row, then pages of half the size in the
    same tile with and without OVERLAP -- bf16 pages, and fp8 K beside bf16 V (fp8k, FP8-Q, judged
    by SQNR) -- each checked against the reference."""
    out = tmp_path / "tune.json"
    assert script("tune_kernels").main(["--smoke", "--op", "paged_attention", "--modes", "bf16,fp8k,fp8kv",
                                        "--half-pages", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["shape"], r["page_size"], r["OVERLAP"], r["PEEL_LAST"]) for r in rows] == [
        ("bf16", "tiny", 8, False, False), ("bf16", "tiny", 8, False, True),
        ("fp8k", "tiny", 8, False, False), ("fp8k", "tiny", 8, False, True),
        ("fp8kv", "tiny", 8, False, False), ("fp8kv", "tiny", 8, False, True),
        ("bf16", "tiny page=4", 4, False, False), ("bf16", "tiny page=4", 4, True, False),
        ("fp8k", "tiny page=4", 4, False, False), ("fp8k", "tiny page=4", 4, True, False)]
    assert not [r for r in rows if "error" in r]
    assert all(r["rel_l2_vs_fp32"] < (0.056 if r["mode"] == "fp8k" else 1e-2) for r in rows)
    assert all(r["F16_DOTS"] == (r["mode"] == "fp8kv") for r in rows)
