"""rope_apply: the rotation of each (even, odd) pair, in every input form the model passes it."""

import pytest
import torch

from lpm_rt.model.rope import grid_positions, rope_apply, rope_cos_sin


def rotated(x, cos, sin):
    """The formula, pair by pair, in fp64."""
    x = x.double()
    out = torch.empty_like(x)
    c, s = cos.double()[:, None, :], sin.double()[:, None, :]
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    return out


@pytest.mark.parametrize("form", ["3d", "4d", "strided", "odd-offset", "bf16", "fp64", "onnx"])
def test_rope_apply_rotates_each_pair(form, monkeypatch):
    g = torch.Generator().manual_seed(0)
    pos = grid_positions(torch.tensor([-8, 0, 5]), 2, 3)                      # N = 18, t < 0 too
    cos, sin = rope_cos_sin(pos, (6, 5, 5), 10000.0)                          # D = 32
    x = torch.randn(2, 18, 4, 32, generator=g)
    if form == "3d":
        x = x[0]
    elif form == "strided":
        x = torch.randn(2, 18, 4, 64, generator=g)[..., ::2]                  # stride 2 on D
    elif form == "odd-offset":
        x = torch.randn(2 * 18 * 4 * 32 + 1, generator=g)[1:].view(2, 18, 4, 32)
    elif form in ("bf16", "fp64"):
        x = x.to(torch.bfloat16 if form == "bf16" else torch.float64)
    elif form == "onnx":
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    got = rope_apply(x, cos, sin)
    assert got.dtype == x.dtype and got.shape == x.shape
    tol = {"bf16": 1e-2, "fp64": 1e-12}.get(form, 1e-6)
    ref = rotated(x, cos, sin)
    assert (got.double() - ref).abs().max() <= tol * ref.abs().max()
