import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


from artifact_fixture import artifact  # noqa: E402,F401  (compiled artifacts for tests/aot and tests/ops)
