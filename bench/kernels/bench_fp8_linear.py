"""pytest-benchmark for fp8_linear: every provider at labelled production shapes (CUDA GPU only).

    pytest bench/kernels/bench_fp8_linear.py --benchmark-json bench/results/fp8_linear.json

The harness (shapes, providers, flops/bytes) is lpm_rt.benchmark.kernels, also behind
``lpm-rt bench kernels --op fp8_linear``; inputs and references come from the tests so the two never diverge.
"""

import torch
from _checks import assert_sqnr
from test_fp8_linear import make_case  # the tests' inputs
from lpm_rt.ops.fp8_linear import fp8_linear, fp8_linear_ref  # noqa: E402

import lpm_rt.ops as ops
from lpm_rt.benchmark import kernels as harness

OP = "fp8_linear"


def test_correct_before_timing():
    x, w, x8, xs, w8, ws, kw = make_case(2, 300, 512, 384, 128, "all")
    dev = lambda t: t.cuda() if isinstance(t, torch.Tensor) else t  # noqa: E731
    out = fp8_linear(dev(x8), dev(xs), dev(w8), dev(ws), **{k: dev(v) for k, v in kw.items()})
    assert_sqnr(out.cpu(), fp8_linear_ref(x8, xs, w8, ws, **kw, out_dtype=torch.float64, compute_dtype=torch.float64), 40.0)


def test_speed(benchmark, shape, provider):
    harness.pytest_benchmark_run(benchmark, OP, shape, provider)
