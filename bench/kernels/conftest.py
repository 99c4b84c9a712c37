"""Shared wiring of the kernel benchmarks: GPU-only, Triton backend, every provider at the
labelled production shapes of the module's ``OP`` (harness: lpm_rt.benchmark.kernels)."""

import os
import sys

import pytest
import torch

# the tests' inputs and checks, so benchmarks and tests never diverge
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "ops"))

import lpm_rt.ops as ops  # noqa: E402
from lpm_rt.benchmark import kernels as harness  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="kernel speed needs a CUDA GPU")
        for item in items:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if {"shape", "provider"} <= set(metafunc.fixturenames):
        op = metafunc.module.OP
        shapes = harness.production_shapes(op, quick=True) if torch.cuda.is_available() else []
        metafunc.parametrize("provider", harness.provider_names(op))
        metafunc.parametrize("shape", shapes, ids=[s["label"] for s in shapes])


@pytest.fixture(autouse=True)
def _triton_backend():
    prev = ops.get_backend()
    ops.set_backend("triton")
    yield
    ops.set_backend(prev)
