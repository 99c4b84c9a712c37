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
    spills = [(r["label"], r["arch"], r["resources"]) for r in rows if r["resources"].get("local", 0)]
    assert not spills, f"register spills: {spills}"
    assert all(r["shared"] <= 227 * 1024 for r in rows if r["arch"] == "sm_90a")   # H100 max per block
    assert all(r["shared"] <= 163 * 1024 for r in rows if r["arch"] == "sm_87")    # Orin max per block
