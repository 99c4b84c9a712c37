"""scripts/bench_refiner.py end to end on CPU (tiny preset, Triton through the interpreter): the
providers run, each output is checked against the fp32 reference, rows land in the JSON after
each provider. The speed figures need a GPU (scripts/gpu_session.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import script  # noqa: E402


def test_refiner_bench_runs_and_checks_each_provider(triton_backend, tmp_path):
    out = tmp_path / "refiner.json"
    rc = script("bench_refiner").main(["--preset", "tiny", "--device", "cpu", "--quick", "--out", str(out),
                                       "--providers", "ref-eager,triton,triton-fp8-graph"])
    res = json.loads(out.read_text())
    rows = {r["provider"]: r for r in res["results"]}
    assert rc == 0 and set(rows) == {"ref-eager", "triton", "triton-fp8-graph"}
    assert rows["ref-eager"]["rel_l2_vs_fp32_ref"] == 0.0               # the reference itself, on CPU
    assert rows["triton"]["rel_l2_vs_fp32_ref"] < 1e-5                  # fp32 kernels: rounding only
    assert 1e-5 < rows["triton-fp8-graph"]["rel_l2_vs_fp32_ref"] < 2e-2  # FP8 GEMMs: quantized, not wrong
    assert all(r["median_ms"] > 0 for r in rows.values())
    assert res["shape"]["refiner_layers"] == 1


def test_compiled_reference_traces_whole():
    """The ``ref-compiled`` baselines are one graph: no graph break left to run eager (memoized
    embeddings, complex RoPE, the host read of kv_lens, unique() in the cache write all broke it)."""
    import torch
    import torch._dynamo

    import lpm_rt.ops as ops
    bench = script("bench_refiner")
    ops.set_backend("ref")
    model = bench.build("tiny", "cpu", "fp32", "fp32", 1)
    st, (x0, noise, mels, attn) = bench.step_inputs(model)
    try:
        with torch.no_grad():
            exp = torch._dynamo.explain(lambda: model._refine(st, x0, noise, mels, attn))()
    finally:
        st.close()
    assert exp.graph_break_count == 0, [str(b.reason)[:200] for b in exp.break_reasons]
    assert exp.graph_count == 1
