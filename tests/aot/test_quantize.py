"""Offline weight quantization: formats, dequantization, SQNR."""

import math

import pytest
import torch

from lpm_rt.artifact import QSCALE_SUFFIX, dequantize, dequantize_state_dict

from lpm_compile.quantize import quantize_state_dict, quantize_weight, sqnr_db
from lpm_compile.targets import WeightFormat, target

F = WeightFormat


def _w(n=96, k=256, outlier_cols=()):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    for c in outlier_cols:
        w[:, c] *= 50.0
    return w


@pytest.mark.parametrize("fmt,dtype,lo,hi", [(F.FP8_CHANNEL, torch.float8_e4m3fn, 28, 34),
                                              (F.FP8_BLOCK, torch.float8_e4m3fn, 28, 34),
                                              (F.INT8_CHANNEL, torch.int8, 36, 45)])
def test_formats_and_sqnr_on_gaussian_weights(fmt, dtype, lo, hi):
    # e4m3 keeps 3 mantissa bits (~31 dB whatever the scale); int8 per channel on N(0,1) with
    # amax ~3.5 sigma: step 3.5/127, noise step/sqrt(12) -> ~42 dB
    w = _w()
    q, s, used = quantize_weight(w, fmt)
    assert used == fmt and q.dtype == dtype and s.dtype == torch.float32
    assert s.shape == ((96, 2) if fmt == F.FP8_BLOCK else (96,))
    db = sqnr_db(w, dequantize(q, s))
    assert lo < db < hi, db


def test_blocks_isolate_outlier_columns():
    w = _w(outlier_cols=(3,))                       # one huge input channel in the first 128-block
    ch = sqnr_db(w[:, 128:], dequantize(*quantize_weight(w, F.INT8_CHANNEL)[:2])[:, 128:])
    q, s, _ = quantize_weight(w, F.FP8_BLOCK)
    blk = sqnr_db(w[:, 128:], dequantize(q, s)[:, 128:])
    assert blk > 25 and blk > ch, (blk, ch)


def test_block_format_falls_back_when_k_is_not_a_multiple_of_128():
    q, s, used = quantize_weight(_w(k=96), F.FP8_BLOCK)
    assert used == F.FP8_CHANNEL and s.shape == (96,)


def test_state_dict_only_block_linears_are_quantized():
    sd = {"blocks.0.self_attn.q.weight": _w(64, 64), "blocks.0.self_attn.q.bias": torch.zeros(64),
          "blocks.1.ffn.2.weight": _w(64, 128), "head.head.weight": _w(64, 64), "blocks.0.modulation": _w(6, 64)}
    out, rows = quantize_state_dict(sd, target("h100"), prefix="backbone.")
    assert {r["layer"] for r in rows} == {"backbone.blocks.0.self_attn.q.weight", "backbone.blocks.1.ffn.2.weight"}
    assert out["blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn
    assert out["blocks.0.self_attn.q.weight" + QSCALE_SUFFIX].shape == (64,)
    assert out["head.head.weight"].dtype == torch.bfloat16 and out["blocks.0.modulation"].dtype == torch.bfloat16
    back = dequantize_state_dict(out)
    assert set(back) == set(sd) and all(v.dtype == torch.float32 for v in back.values())
    assert sqnr_db(sd["blocks.1.ffn.2.weight"], back["blocks.1.ffn.2.weight"]) == pytest.approx(
        [r for r in rows if "ffn" in r["layer"]][0]["sqnr_db"], abs=0.01)
    _, rows32 = quantize_state_dict(sd, target("cpu"))
    assert all(r["sqnr_db"] is None for r in rows32)          # fp32: lossless
    assert math.isinf(sqnr_db(sd["head.head.weight"], sd["head.head.weight"]))


def test_step_check_measures_the_quantized_step():
    """The compile step check (teacher-forced, the default character and the built-in
    conversation): lossless weights with fp32 pages agree to rounding; the h100 form (fp8
    weights and pages) is lossy but above the 25 dB floor; a 50 % error in one block's output
    projection shows up far below it."""
    from lpm_compile.pipeline import PARTS, resolve_model, step_sqnr
    model, _ = resolve_model("tiny")
    h100 = target("h100")
    plain = {p: {k: v.detach().clone() for k, v in getattr(model, p).state_dict().items()} for p in PARTS}
    exact = step_sqnr(model, plain, target("cpu"), chunks=3)
    assert min(exact["velocity_db"], exact["refiner_db"], exact["video_db"]) > 100, exact
    stored = {p: quantize_state_dict(sd, h100, prefix=f"{p}.")[0] for p, sd in plain.items()}
    fp8 = step_sqnr(model, stored, h100, chunks=3)
    assert 25 < fp8["velocity_db"] < 60 and 25 < fp8["refiner_db"] < 60 and 25 < fp8["video_db"] < 60, fp8
    plain["backbone"]["blocks.0.self_attn.o.weight"] *= 1.5
    bad = step_sqnr(model, plain, target("cpu"), chunks=3)
    assert bad["velocity_db"] < 25, (bad, fp8)
