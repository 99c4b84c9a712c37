"""norm_modulate (Triton, interpreter on CPU) against the fp64 reference.

Inputs are built as the model builds them: the modulation is a [B, Lm, 6, C] tensor and shift /
scale are the strided ``chunk(6, dim=2)`` views of it (per sample: Lm = 1, per token: Lm = L);
x is a non-contiguous view. Outputs are poisoned via torch's fill-uninitialized-memory mode.
"""

from __future__ import annotations


import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.ops import norm_modulate, norm_modulate_ref

from _checks import assert_calibrated, assert_sqnr, spy_triton

pytestmark = pytest.mark.usefixtures("poison_allocations")   # unwritten outputs show as NaN


def make_case(B, L, C, dtype, per_token, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, L, 2 * C, generator=g) * 3 + 0.5).to(dtype)[..., 1::2]   # (B, L, C) strided
    e = (torch.randn(B, L if per_token else 1, 6, C, generator=g) * 0.5).to(dtype)  # (B, Lm, 6, C)
    shift, scale = (t.squeeze(2) for t in e.chunk(6, dim=2)[:2])                    # (B, Lm, C) views
    return x, shift, scale



TINY, DEMO = preset("tiny"), preset("demo")


@pytest.mark.parametrize("B,L,C,dtype,per_token,norm", [
    pytest.param(2, 5, TINY.model.dim, torch.float32, False, "layer", id="tiny-fp32-sample"),
    pytest.param(1, 7, DEMO.model.dim, torch.bfloat16, True, "layer", id="demo-bf16-token"),
    pytest.param(2, 1, 72, torch.float16, True, "rms", id="odd-C-L1-fp16-rms"),
    pytest.param(1, 3, 200, torch.float32, False, "rms", id="fp32-rms"),
])
def test_matches_fp64_reference(triton_backend, B, L, C, dtype, per_token, norm):
    x, shift, scale = make_case(B, L, C, dtype, per_token)
    assert not x.is_contiguous() and (B * shift.shape[1] == 1 or not shift.is_contiguous())
    y = norm_modulate(x, shift, scale, 1e-6, norm)
    ref = norm_modulate_ref(x.double(), shift.double(), scale.double(), 1e-6, norm)
    low = norm_modulate_ref(x, shift, scale, 1e-6, norm)
    assert y.dtype == dtype and y.shape == x.shape
    assert_calibrated(y, low, ref, floor=1e-5)


@pytest.mark.parametrize("dtype,per_token", [(torch.bfloat16, True), (torch.float32, False)])
def test_fp8_output(triton_backend, dtype, per_token):
    x, shift, scale = make_case(2, 6, 96, dtype, per_token)
    y8, s = norm_modulate(x, shift, scale, out_fp8=True)
    assert y8.dtype == torch.float8_e4m3fn and s.shape == (2, 6) and s.dtype == torch.float32
    ref = norm_modulate_ref(x.double(), shift.double(), scale.double())
    r8, rs = norm_modulate_ref(x, shift, scale, out_fp8=True)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, rs, rtol=1e-2, atol=0)
    assert_sqnr(y8.double() * s.double()[..., None], ref, min_db=30.0, min_cos=0.999)
    same = (y8.view(torch.uint8) == r8.view(torch.uint8)).double().mean().item()
    assert same >= 0.97, f"only {same:.3f} of fp8 codes equal the reference's"


def test_launcher_really_launches_triton(triton_backend, monkeypatch):
    launches = spy_triton(monkeypatch, "norm_modulate", "_norm_modulate_kernel")
    x, shift, scale = make_case(1, 3, 32, torch.float32, True)
    assert torch.isfinite(norm_modulate(x, shift, scale)).all() and launches == [(3,)]


def test_bad_broadcast_raises(triton_backend):
    x, shift, scale = make_case(1, 3, 32, torch.float32, True)
    with pytest.raises(ValueError, match="broadcast"):
        norm_modulate(x, shift[..., :16], scale)


@pytest.mark.gpu
def test_gpu_lpm17b_fp8_output(gpu_triton):
    """lpm-17b width (C = 5120, one 8192-wide block per row) over a 6-frame 480P chunk: each row's
    scale is its true max / 448 (rtol 1e-3 leaves the norm's rounding; a row max reduced wrong
    is off by percents), and the e4m3 rows dequantize to
    the fp64 reference."""
    C = preset("lpm-17b").model.dim
    x, shift, scale = (t.cuda() for t in make_case(1, 6 * 1560, C, torch.bfloat16, False))
    y8, s = norm_modulate(x, shift, scale, out_fp8=True)
    _, rs = norm_modulate_ref(x, shift, scale, out_fp8=True)
    torch.testing.assert_close(s, rs, rtol=1e-3, atol=0)
    ref = norm_modulate_ref(x.double(), shift.double(), scale.double())
    assert_sqnr(y8.double() * s.double()[..., None], ref, min_db=30.0, min_cos=0.999)
