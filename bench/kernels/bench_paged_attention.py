"""pytest-benchmark for paged_attention: every provider at labelled production shapes (CUDA GPU only).

    pytest bench/kernels/bench_paged_attention.py --benchmark-json bench/results/paged_attention.json

The harness (shapes, providers, flops/bytes) is lpm_rt.benchmark.kernels, also behind
``lpm-rt bench kernels --op paged_attention``; inputs and references come from the tests so the two never diverge.
"""

import torch
from _checks import assert_sqnr
from test_paged_attention import make_case, references  # the tests' inputs + reference

import lpm_rt.ops as ops
from lpm_rt.benchmark import kernels as harness

OP = "paged_attention"


def test_correct_before_timing():
    args = make_case(1, 300, 8, 128, 120, [5 * 1560 + 7], torch.bfloat16, torch.float8_e4m3fn, device="cuda")
    ref, _ = references(*[a.cpu() if a is not None else None for a in args])
    assert_sqnr(ops.paged_attention(*args, fp8_q=True).cpu(), ref, min_db=25.0)
    assert_sqnr(ops.paged_attention(*args, fp8_q=False).cpu(), ref, min_db=40.0)


def test_speed(benchmark, shape, provider):
    harness.pytest_benchmark_run(benchmark, OP, shape, provider)
