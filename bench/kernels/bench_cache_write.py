"""pytest-benchmark for cache_write: every provider at labelled production shapes (CUDA GPU only).

    pytest bench/kernels/bench_cache_write.py --benchmark-json bench/results/cache_write.json

The harness (shapes, providers, flops/bytes) is lpm_rt.benchmark.kernels, also behind
``lpm-rt bench kernels --op cache_write``; inputs and references come from the tests so the two never diverge.
"""

import torch
from _checks import assert_sqnr
from test_cache_write import make_case, new_pages  # the tests' inputs

import lpm_rt.ops as ops
from lpm_rt.benchmark import kernels as harness

OP = "cache_write"


def test_correct_before_timing():
    k, v, slots, cos, sin = make_case(1560, 40, 128, 120, 20, torch.bfloat16)
    kp, vp, ks, vs = new_pages(20, 120, 40, 128, torch.float8_e4m3fn)
    rkp, rvp, rks, rvs = (t.clone() for t in (kp, vp, ks, vs))
    ops.cache_write_ref(k, v, rkp, rvp, slots, rks, rvs, cos, sin)
    g = [t.cuda() for t in (k, v, kp, vp, slots, ks, vs, cos, sin)]
    ops.cache_write(*g)
    w = slots.div(120, rounding_mode="floor").unique()
    assert_sqnr(g[2].cpu().double()[w] * g[5].cpu().double()[w][:, None, :, None],
                rkp.double()[w] * rks.double()[w][:, None, :, None], 30.0)


def test_speed(benchmark, shape, provider):
    harness.pytest_benchmark_run(benchmark, OP, shape, provider)
