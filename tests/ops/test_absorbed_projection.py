"""The fp8 block form's cross-attentions with the output projection absorbed into the values
(``Attention.stream_kv`` -> :class:`AbsorbedKV`, ``Attention.cross_out``): the block computes
residual + o(attention) with o's dequantized weights -- the same math as the projection's GEMM
minus the e4m3 rounding of its input -- for the text (keys normed once per session) and the
frame-local audio (keys normed in the kernel), and with the next norm fused, norm_modulate's
output of those rows; long streams and the unquantized form keep the GEMM."""

from __future__ import annotations

import pytest
import torch

import lpm_rt.ops as ops
from lpm_rt.config import preset
from lpm_rt.model.dit import AbsorbedKV, LPMDiT, RawKV
from lpm_rt.model.fp8 import quantize_blocks_

from _checks import assert_calibrated

CFG = preset("tiny").model


def _net(quantized: bool = True):
    net = LPMDiT(CFG).init_weights(0).eval()
    g = torch.Generator().manual_seed(1)
    for blk in net.blocks:                     # the audio projection is zero-initialised: give it weights
        blk.audio_attn.o.weight.data = torch.randn(CFG.dim, CFG.dim, generator=g) / CFG.dim ** 0.5
        blk.audio_attn.o.bias.data = torch.randn(CFG.dim, generator=g) * 0.1
    return quantize_blocks_(net) if quantized else net


def _chain(attn, x_pair, stream, dtype):
    """residual-free o(attention) in ``dtype``: q from the block's q GEMM, keys normed, values and
    the projection from the fp8 weights dequantized -- no e4m3 rounding of the attention output."""
    H, D = attn.heads, attn.head_dim
    heads = lambda t: t.unflatten(-1, (H, D)).to(dtype)                  # noqa: E731
    k, v = attn._kv_raw(stream)
    att = ops.cross_attention_ref(heads(attn.q(x_pair)), heads(k), heads(v), attn.norm_q.weight.to(dtype),
                                  attn.norm_k.weight.to(dtype), attn.norm_q.eps)
    return torch.nn.functional.linear(att.flatten(2), attn.o.weight_as(dtype), attn.o.bias.to(dtype))


@pytest.mark.parametrize("backend", ["ref", "triton"])
@pytest.mark.parametrize("branch", ["text", "audio"])
def test_cross_attention_absorbs_its_projection(triton_backend, backend, branch):
    ops.set_backend(backend)
    blk = _net().blocks[1]
    g = torch.Generator().manual_seed(2)
    if branch == "text":                       # 3 prompt tags, the chunk's 32 tokens
        attn, raw, norm = blk.cross_attn, False, "norm3"
        stream, x = torch.randn(1, 3, CFG.dim, generator=g), torch.randn(1, 32, CFG.dim, generator=g)
    else:                                      # 2 frames of 16 tokens, each with its 4-token audio window
        attn, raw, norm = blk.audio_attn, True, "norm_audio"
        stream, x = torch.randn(2, 4, CFG.audio_dim, generator=g), torch.randn(2, 16, CFG.dim, generator=g)
    with torch.no_grad():
        kv = attn.stream_kv(stream, raw=raw)
        assert isinstance(kv, AbsorbedKV) and (kv.k_weight is not None) == raw
        x_pair = blk._affine_norm(norm, x)
        got, normed = attn.cross_out(x_pair, kv, residual=x)
        assert normed is None                                            # no next norm asked for
        want = x.double() + _chain(attn, x_pair, stream, torch.float64)
        low = x + _chain(attn, x_pair, stream, torch.float32)
        through_gemm = attn.o(attn.cross_heads(x_pair, attn.raw_kv(stream)), residual=x)
        # with the next norm fused: the same rows, and norm_modulate's e4m3 output of them
        shift, scale = torch.randn(2, x.shape[0], 1, CFG.dim, generator=g) * 0.3
        fused, (y8, ys) = attn.cross_out(x_pair, kv, residual=x, next_norm=(shift, scale, 1e-6))
        want8, want_s = ops.norm_modulate_ref(fused, shift, scale, 1e-6, out_fp8=True)
    assert torch.equal(fused, got)
    assert torch.allclose(ys, want_s, rtol=1e-5, atol=0)                 # the per-row scales
    assert (y8.float() != want8.float()).float().mean() < 0.01           # a rounding tie may flip a code
    assert_calibrated(got, low, want, floor=1e-5)
    # the projection's GEMM rounds its input to e4m3 (~1e5 x the absorbed form's error here),
    # which the absorbed form does not
    assert (through_gemm.double() - want).abs().max() > 1000 * (got.double() - want).abs().max()


def test_long_streams_and_the_plain_form_keep_the_projection():
    blk = _net().blocks[0]
    with torch.no_grad():
        # as many text keys as the head dim: absorbing would cost more than the projection
        long_text = blk.cross_attn.stream_kv(torch.randn(1, CFG.head_dim, CFG.dim), raw=False)
        assert isinstance(long_text, tuple) and not isinstance(long_text, AbsorbedKV)
        short = blk.cross_attn.stream_kv(torch.randn(1, CFG.head_dim - 1, CFG.dim), raw=False)
        assert isinstance(short, AbsorbedKV)
        plain = _net(quantized=False).blocks[0]
        assert isinstance(plain.audio_attn.stream_kv(torch.randn(2, 4, CFG.audio_dim), raw=True), RawKV)


def test_the_audio_projection_is_cached_per_weight_version():
    """A chunk's audio absorbs the projection every chunk: its [H, D, C] form is made once, and
    again when the weights change in place."""
    attn = _net().blocks[0].audio_attn
    a = attn._o_heads(cache=True)
    assert attn._o_heads(cache=True) is a
    assert torch.equal(a, attn.o.weight_as(torch.float32).t().reshape(CFG.num_heads, CFG.head_dim, -1))
    attn.o.w_scale_bits.view(torch.float32).mul_(2.0)
    b = attn._o_heads(cache=True)
    assert b is not a and torch.equal(b, 2 * a)


@pytest.mark.parametrize("backend", ["ref", "triton"])
@pytest.mark.parametrize("ka", [4, 12])
def test_guided_audio_is_the_lerp_of_both_streams(triton_backend, backend, ka):
    """Guidance on an absorbed audio stream: one kernel over silence's window and the chunk's
    (4 + 4 keys fit a tile: merged), or two kernels and a lerp (12 + 12 keys would exceed the
    head dim: not merged) -- either way lerp(out(silence), out(chunk), g) of the plain outputs."""
    from lpm_rt.model.dit import GuidedKV, absorbed_guided

    ops.set_backend(backend)
    blk = _net().blocks[1]
    attn = blk.audio_attn
    g = torch.Generator().manual_seed(4)
    null, audio = (torch.randn(2, ka, CFG.audio_dim, generator=g) for _ in range(2))
    x = torch.randn(2, 16, CFG.dim, generator=g)
    with torch.no_grad():
        kv, kv0 = attn.stream_kv(audio, raw=True), attn.stream_kv(null, raw=True)
        guided = GuidedKV(kv, kv0, 3.0)
        merged = absorbed_guided(guided)
        assert isinstance(merged, AbsorbedKV) == (ka == 4) and (ka == 4) == (getattr(merged, "split", 0) == ka)
        x_pair = blk._affine_norm("norm_audio", x)
        got, _ = attn.cross_out(x_pair, guided, residual=x)
        want = torch.lerp(attn.cross_out(x_pair, kv0, residual=x)[0].double(),
                          attn.cross_out(x_pair, kv, residual=x)[0].double(), 3.0)
    assert (got.double() - want).abs().max() < 1e-4 * want.abs().max()
