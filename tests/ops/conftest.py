"""Op tests run the Triton kernels on CPU through the interpreter (the default, what CI does).

TRITON_INTERPRET must be set before triton is imported (``triton.jit`` reads it when it decorates
the kernels), so it is set here, before any test module imports csrc_triton. With
``LPM_TEST_GPU=1`` on a CUDA machine the kernels are compiled instead: the interpreter-sized CPU
tests skip and the production-shape GPU tests (marked ``gpu``) run.
"""

import os
import sys

GPU_MODE = os.environ.get("LPM_TEST_GPU") == "1"
# triton.language reads TRITON_INTERPRET when it is imported: if something imported triton first
# (e.g. torch.compile in an earlier test module), the interpreter cannot be switched on any more.
INTERP_OK = GPU_MODE or "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1"
if not GPU_MODE:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import lpm_rt.ops as ops  # noqa: E402

HAS_GPU = GPU_MODE and torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: production-shape test on a CUDA GPU (LPM_TEST_GPU=1)")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and LPM_TEST_GPU=1 (compiled kernels)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip)


@pytest.fixture
def triton_backend():
    """Select the triton backend for one interpreter-sized CPU test, restoring the previous one."""
    if GPU_MODE:
        pytest.skip("CPU/interpreter test; kernels are compiled in LPM_TEST_GPU mode")
    if not INTERP_OK:
        pytest.skip("triton was imported before tests/ops/conftest.py could set TRITON_INTERPRET=1: "
                    "run `pytest tests/ops` on its own or set TRITON_INTERPRET=1 in the environment")
    prev = ops.get_backend()
    ops.set_backend("triton")
    yield
    ops.set_backend(prev)


@pytest.fixture
def gpu_triton():
    prev = ops.get_backend()
    ops.set_backend("triton")
    yield "cuda"
    ops.set_backend(prev)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_allocations():
    """torch.empty returns NaN-filled memory while this is on: unwritten outputs show up."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(prev)
