"""AOT-compile every kernel for sm_90a (H100) and sm_87 (Orin) on this GPU-less host and read the
SASS: fp8 attention / fp8 linear must use QGMMA (fp8 wgmma), bf16 attention HGMMA on sm_90a, and
the Orin builds HMMA. Runs ``python -m lpm_rt.benchmark.sass`` in a subprocess because this test
session decorates the kernels under TRITON_INTERPRET=1 (~20 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


def _tools_present() -> bool:
    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return all(os.path.exists(os.path.join(d, t)) for t in ("ptxas", "cuobjdump"))


@pytest.mark.skipif(not _tools_present(), reason="triton wheel without the bundled NVIDIA ptxas/cuobjdump")
def test_kernels_compile_to_the_intended_mma():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "lpm_rt.benchmark.sass", "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = [r for r in rows if not r["ok"]]
    assert not bad, f"MMA expectations failed: {bad}"
    by_label = {r["label"]: r for r in rows}
    assert by_label["paged_attention fp8 pages, FP8-Q, d128"]["mma"].get("QGMMA", 0) > 0
    assert by_label["fp8_linear 1x128 blocks + gated residual"]["mma"].get("QGMMA", 0) > 0
    assert by_label["paged_attention fp16, d128 (Orin)"]["mma"].get("HMMA", 0) > 0
    assert by_label["paged_attention bf16, TMA page tiles, d128"]["tma_loads"] > 0       # UTMALDG
    assert by_label["paged_attention bf16, d128"]["tma_loads"] == 0
    # fp8 pages under bf16 q: e4m3 -> bf16 costs a scalar convert (F2F) per value, e4m3 -> fp16
    # none (packed F2FP); the launcher and the h100 artifacts take the fp16 form (F16_DOTS)
    assert by_label["paged_attention fp8 pages, bf16 dots, d128"]["scalar_converts"] >= 128
    assert by_label["paged_attention fp8 pages, fp16 dots, d128"]["scalar_converts"] == 0
    # FP8-Q over fp8 pages with P.V in fp16: Q.K^T on fp8 wgmma over the K codes, P.V on fp16 wgmma
    qk8 = by_label["paged_attention fp8 pages, fp8 Q.K^T + fp16 P.V, d128"]
    assert qk8["mma"].get("QGMMA", 0) > 0 and qk8["mma"].get("HGMMA", 0) > 0 and qk8["scalar_converts"] == 0
    fp16_dots = by_label["paged_attention fp8 pages, fp16 dots, d128"]
    assert 0 < qk8["loop_instructions"][0] < fp16_dots["loop_instructions"][0]      # 704 < 743 (Triton 3.9)
    # OVERLAP: the softmax's exponentials of block j issue while block j + 1's Q.K^T wgmma is in
    # flight (34 per thread per block: 32 scores and 2 row factors); the plain loop waits for every
    # product before its softmax
    assert by_label["paged_attention bf16, 60-token page tiles, OVERLAP, d128"]["exp_in_flight"] >= 32
    assert by_label["paged_attention bf16, d128"]["exp_in_flight"] == 0
    # mixed pages (fp8 K, bf16 V) under FP8-Q: Q.K^T on fp8 wgmma, P.V on bf16 wgmma, and half the
    # block's exponentials issued under the QGMMA (each block's page scale carried with its product)
    mixed = by_label["paged_attention fp8 K + bf16 V pages, FP8-Q, 60-token page tiles, OVERLAP, d128"]
    assert mixed["mma"].get("QGMMA", 0) > 0 and mixed["mma"].get("HGMMA", 0) > 0
    assert mixed["exp_in_flight"] >= 16
    # no kernel has its wgmma serialized by ptxas (each MMA waited on alone: seen once, with the
    # last page peeled after the loop over bf16 pages -- it is peeled before the loop)
    serial = [r["label"] for r in rows
              if r["wgmma"]["total"] >= 4 and r["wgmma"]["waited_alone"] == r["wgmma"]["total"]]
    assert not serial, serial
    # the range's last page before the loop (PEEL_LAST, the launcher's pick for page tiles): the
    # loop's key mask is constant, two copies of the block's MMAs, a shorter loop (628 against 827)
    peeled, plain = by_label["paged_attention bf16, d128"], by_label["paged_attention bf16, last page in the loop, d128"]
    assert peeled["wgmma"]["total"] == 2 * plain["wgmma"]["total"]
    assert peeled["loop_instructions"][0] < 0.8 * plain["loop_instructions"][0]
    # spilled registers: the stack frame (cuobjdump's LOCAL reads 0 even then) and STL in the SASS.
    # The known ones, bytes per thread, and why they stay: 1x128 weight blocks and in-GEMM
    # quantization need a second [BM, BN] fp32 tile beside the accumulator; the cache write's fp8
    # path holds a whole page's rotated K for its amax (memory-bound, ~1/300 of attention's time);
    # paged attention's one-page 128x128 key blocks (PAGE_TILES) over bf16 pages hold S, P and O for
    # 128 rows on two warpgroups: a few words spill, and the tile still measured fastest on the H200
    # (bench/results/gpu-20261204-2/tune.json, 1.27x the 128x64 blocks that do not spill); over fp8
    # pages the loop with the last page peeled (PEEL_LAST) spills nothing; the bf16-dot form over
    # fp8 pages, kept for comparison, is compiled unpeeled as before (peeled it spills 88 bytes)
    known = {"fp8_linear 1x128 blocks + gated residual": 16,
             "fp8_linear bf16 input quantized in-kernel + gated residual": 8,
             "cache_write q/k RMSNorm + RoPE + K smoothing + fp8": 160,
             "paged_attention bf16, d128": 8,
             "paged_attention bf16, last page in the loop, d128": 8,
             "paged_attention fp8 pages, bf16 dots, d128": 8,
             **{f"fp8_linear autotune cfg {i} (block scales)": 16 for i in (0, 3)},
             **{f"fp8_linear autotune cfg {i} (block scales, bf16 x)": 160 for i in (0, 3)},
             **{f"fp8_linear autotune cfg {i} (per-channel, bf16 x)": 8 for i in (0, 3)},
             "fp8_linear autotune cfg 1 (block scales, bf16 x)": 40,
             "fp8_linear autotune cfg 1 (per-channel, bf16 x)": 48}
    spills = [(r["label"], r["arch"], r["resources"].get("stack"), r["local_stores"]) for r in rows
              if r["resources"].get("stack", 0) > known.get(r["label"], 0)
              or (r["local_stores"] and r["label"] not in known)]
    assert not spills, f"register spills (label, arch, stack bytes, STL count): {spills}"
    assert all(r["shared"] <= 227 * 1024 for r in rows if r["arch"] == "sm_90a")   # H100 max per block
    assert all(r["shared"] <= 163 * 1024 for r in rows if r["arch"] == "sm_87")    # Orin max per block
