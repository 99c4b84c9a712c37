"""pytest-benchmark for cross_attention: every provider at labelled production shapes (CUDA GPU only).

    pytest bench/kernels/bench_cross_attention.py --benchmark-json bench/results/cross_attention.json

The harness (shapes, providers, flops/bytes) is lpm_rt.benchmark.kernels, also behind
``lpm-rt bench kernels --op cross_attention``; inputs and references come from the tests so the two never
diverge. ``sdpa-alone`` is SDPA on the same q/k/v with the norms left out (a lower bound the fused
kernel competes with, not the same work).
"""

import torch
from _checks import assert_sqnr
from test_cross_attention import make_case  # the tests' inputs

import lpm_rt.ops as ops
from lpm_rt.benchmark import kernels as harness

OP = "cross_attention"


def test_correct_before_timing():
    q, k, v, qw, kw = make_case(2, 1560, 8, 40, 128, True, True, torch.bfloat16)
    out = ops.cross_attention(q.cuda(), k.cuda(), v.cuda(), qw.cuda(), kw.cuda())
    want = ops.cross_attention_ref(q.double(), k.double(), v.double(), qw.double(), kw.double())
    assert_sqnr(out.cpu(), want, 35.0)


def test_speed(benchmark, shape, provider):
    harness.pytest_benchmark_run(benchmark, OP, shape, provider)
