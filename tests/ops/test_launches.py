"""The fp8 block form is a short fixed sequence of launches, all of them Triton kernels
(the refiner path of the kernels issue), and the online step's fixed-timestep embeddings are
computed once. Counted at the torch dispatcher (``lpm_rt.benchmark.launches``)."""

from __future__ import annotations

import pytest
import torch

import lpm_rt.ops as ops
from lpm_rt.benchmark.launches import LaunchCounter, block_launches
from lpm_rt.config import KVDtype, preset
from lpm_rt.model.dit import LPMDiT
from lpm_rt.model.online import OnlineLPM

FP8_BLOCK = [                      # (the adaLN vectors, modulation + time embedding: memoized)
    "lpm_rt::norm_modulate_fp8",   # LayerNorm + adaLN -> e4m3, per-token scales
    "lpm_rt::fp8_linear",          # q|k|v in one GEMM
    "lpm_rt::cache_write",         # RMSNorms of q and k, RoPE, K smoothing, fp8 pages; q out too
    "lpm_rt::paged_attention",     # over [refs | history | chunk]
    "lpm_rt::fp8_linear",          # o, input quantized in the GEMM, x + gate * o
    "lpm_rt::norm_modulate_fp8",   # text-attention LayerNorm -> e4m3
    "lpm_rt::fp8_linear",          # text q
    "lpm_rt::cross_attention_out_norm",  # RMSNorm of q fused, o absorbed into the values, + residual,
                                   # then the audio-attention LayerNorm -> e4m3; the text's keys and
                                   # absorbed values: computed once per session
    "lpm_rt::fp8_linear",          # audio q
    "lpm_rt::cross_attention_out_norm",  # frame-local, RMSNorms of q and k fused, o absorbed,
                                   # + residual, then LayerNorm + adaLN -> e4m3; the audio's k and
                                   # absorbed values: once per chunk
    "lpm_rt::fp8_linear",          # ffn up + GELU(tanh)
    "lpm_rt::fp8_linear",          # ffn down + gated residual
]


def _model(fp8: bool):
    cfg = preset("tiny")
    cfg = cfg.replace(stream=cfg.stream.replace(backbone_steps=1),
                      runtime=cfg.runtime.replace(kv_dtype=KVDtype.FP8, max_sessions=1))
    model = OnlineLPM(cfg).init_weights(0).eval()
    return model.quantize_fp8_() if fp8 else model


@pytest.mark.parametrize("net", ["refiner", "backbone"])
def test_fp8_block_is_a_fixed_sequence_of_launches(triton_backend, net):
    got = block_launches(_model(fp8=True), net)
    assert got["block"] == FP8_BLOCK, "\n".join(got["block"])
    # the pass: the blocks plus the output head (its LayerNorm, modulation and projection)
    layers = len(getattr(_model(False), net).blocks)
    assert got["pass"] <= layers * len(FP8_BLOCK) + 6, got["pass"]
    # per chunk, outside the passes: every block's audio k|v, one GEMM each (tokens quantized in
    # it), and the values' absorption of the output projection, one batched matmul over the heads
    assert got["audio_kv"] == ["lpm_rt::fp8_linear", "aten::bmm"] * layers, got["audio_kv"]


def test_guided_audio_keeps_the_sequence(triton_backend, monkeypatch):
    """With audio guidance in the last block (a listener block), silence's stream and the chunk's
    run in the same one kernel: the block's sequence does not change."""
    import lpm_rt.model.online as online

    merged, real = [], online.absorbed_guided
    monkeypatch.setattr(online, "absorbed_guided", lambda kv: merged.append(kv.gain) or real(kv))
    model = _model(fp8=True)
    model.cfg = model.cfg.replace(stream=model.cfg.stream.replace(listener_guidance=2.0))
    got = block_launches(model, "backbone")
    assert got["block"] == FP8_BLOCK, "\n".join(got["block"])
    assert merged and set(merged) == {2.0}                  # the guided streams were merged, per chunk


def test_plain_form_launches_twice_as_many(triton_backend):
    """The plain form (same model: separate q/k/v linears, eager norms and adaLN arithmetic):
    measured 37."""
    plain = block_launches(_model(fp8=False))["block"]
    assert len(plain) >= 2 * len(FP8_BLOCK), len(plain)


def test_timestep_embedding_is_memoized_and_follows_the_weights():
    net = LPMDiT(preset("tiny").model).init_weights(0).eval()
    want = lambda: net.embed_time(torch.full((1, 2), 500.0))            # noqa: E731
    with torch.no_grad():
        a = net.embed_timestep(500.0, 2, "cpu")
        assert all(torch.equal(x, y) for x, y in zip(a, want()))
        with LaunchCounter() as lc:
            assert net.embed_timestep(500.0, 2, "cpu") is a
        assert lc.ops == []
        assert net.embed_timestep(250.0, 2, "cpu") is not a
        blk = net.blocks[0]
        first = blk._modulation(a[1])
        assert blk._modulation(a[1]) is first and torch.equal(first, blk._modulation(a[1].clone()))
        blk.modulation.add_(1.0)                                           # the block's own weights
        assert torch.equal(blk._modulation(a[1]), blk._modulation(a[1].clone())) and not torch.equal(
            blk._modulation(a[1]), first)
        next(net.time_projection.parameters()).add_(0.5)                  # an in-place update
        b = net.embed_timestep(500.0, 2, "cpu")
        assert b is not a and all(torch.equal(x, y) for x, y in zip(b, want()))
        net.load_state_dict(LPMDiT(preset("tiny").model).init_weights(1).state_dict())
        c = net.embed_timestep(500.0, 2, "cpu")
        assert all(torch.equal(x, y) for x, y in zip(c, want())) and not torch.equal(c[1], b[1])
    e = net.embed_timestep(500.0, 2, "cpu")                                # with grad: never memoized
    assert e[1].requires_grad and e is not net.embed_timestep(500.0, 2, "cpu")
