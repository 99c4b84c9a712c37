"""pytest-benchmark for norm_modulate: every provider at labelled production shapes (CUDA GPU only).

    pytest bench/kernels/bench_norm_modulate.py --benchmark-json bench/results/norm_modulate.json

The harness (shapes, providers, flops/bytes) is lpm_rt.benchmark.kernels, also behind
``lpm-rt bench kernels --op norm_modulate``; inputs and references come from the tests so the two never diverge.
"""

import torch
from _checks import assert_sqnr
from test_norm_modulate import make_case  # the tests' inputs

import lpm_rt.ops as ops
from lpm_rt.benchmark import kernels as harness

OP = "norm_modulate"


def test_correct_before_timing():
    x, shift, scale = make_case(2, 1560, 5120, torch.bfloat16, True)
    out = ops.norm_modulate(x.cuda(), shift.cuda(), scale.cuda())
    assert_sqnr(out.cpu(), ops.norm_modulate_ref(x.double(), shift.double(), scale.double()), 40.0)


def test_speed(benchmark, shape, provider):
    harness.pytest_benchmark_run(benchmark, OP, shape, provider)
