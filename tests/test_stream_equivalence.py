"""Streaming chunks through the paged cache == one whole-clip forward with the block-causal mask."""

import pytest
import torch

from lpm_rt.config import KVDtype, preset
from lpm_rt.model.audio import MEL_HOP, MEL_WIN, log_mel
from lpm_rt.model.online import OnlineLPM
from lpm_rt.model.text import tag_context
from lpm_rt.model.vae import DecoderCache

from _util import rel_err


def _model(steps, kv=KVDtype.FP32, history=3):
    cfg = preset("tiny")
    cfg = cfg.replace(stream=cfg.stream.replace(backbone_steps=steps, history_frames=history),
                      runtime=cfg.runtime.replace(kv_dtype=kv, max_sessions=2))
    return OnlineLPM(cfg).init_weights(3).eval()


def _stream_and_dense(model, n_chunks, refs=2):
    cfg = model.cfg
    s, m = cfg.stream, cfg.model
    C, spl = s.chunk_frames, m.vae_temporal * 1000            # samples per latent frame
    ctx = (MEL_WIN - MEL_HOP) + m.audio_context * spl
    g = torch.Generator().manual_seed(1)
    spk = torch.randn(1, n_chunks * C * spl, generator=g) * 0.1
    lis = torch.randn(1, n_chunks * C * spl, generator=g) * 0.1
    pad = lambda a: torch.cat([torch.zeros(1, ctx), a], 1)   # noqa: E731  (silence before the stream)
    ref_lat = torch.randn(1, m.vae_z_dim, refs, s.latent_h, s.latent_w, generator=g)
    kinds = torch.tensor([0, 2, 1][:refs])
    state = model.open_stream(ref_lat, kinds, "smile", seed=5)
    cap = []
    for c in range(n_chunks):
        sl = slice(c * C * spl, (c + 1) * C * spl)
        a_s, a_l = pad(spk)[:, sl.start:sl.stop + ctx], pad(lis)[:, sl.start:sl.stop + ctx]
        model.step(state, a_s, a_l, capture=cap)
    state.close()
    x = torch.cat([c[0] for c in cap], 2)                     # last-step inputs of every chunk
    v_stream = torch.cat([c[1] for c in cap], 2)
    mels = (log_mel(pad(spk), m.n_mels), log_mel(pad(lis), m.n_mels))
    with torch.no_grad():
        v_dense = model.backbone(x, torch.full((1, x.shape[2]), s.history_t), tag_context(model.backbone, "smile"),
                                 mels, ref_lat, kinds, chunk_frames=C, window=s.history_frames,
                                 ref_time_index=s.ref_time_index)
    return v_stream, v_dense


@pytest.mark.parametrize("steps", [1, 2])
def test_stream_equals_block_causal_forward(steps):
    model = _model(steps)
    v_stream, v_dense = _stream_and_dense(model, n_chunks=4)   # 8 frames, window 3: eviction happens
    err = rel_err(v_stream, v_dense)
    assert torch.isfinite(v_stream).all()
    assert err < 1e-5, f"stream vs dense rel err {err:.2e}"


def test_window_matters():
    """Guard against a vacuous pass: a different history window changes the dense result."""
    model = _model(1)
    v_stream, _ = _stream_and_dense(model, n_chunks=4)
    model2 = _model(1, history=1)
    _, v_dense_w1 = _stream_and_dense(model2, n_chunks=4)
    assert rel_err(v_stream, v_dense_w1) > 1e-3


def test_fp8_pages_close_to_fp32():
    v8, vd = _stream_and_dense(_model(1, kv=KVDtype.FP8), n_chunks=3)
    sqnr = 20 * torch.log10(vd.norm() / (v8 - vd).norm())
    assert sqnr > 25, f"fp8 pages SQNR {sqnr:.1f} dB"


@pytest.mark.parametrize("res", [0, 1])
def test_vae_streaming_decode_equals_whole(res):
    import dataclasses
    m = dataclasses.replace(preset("tiny").model, vae_res=res)
    from lpm_rt.model.vae import VAE
    vae = VAE(m).init_weights(0).eval()
    if res:                                            # residual stages exist (encoder and decoder)
        assert sum(p.numel() for p in vae.parameters()) > sum(
            p.numel() for p in VAE(preset("tiny").model).parameters())
    z = torch.randn(1, m.vae_z_dim, 5, 8, 8)
    with torch.no_grad():
        whole = vae.decode(z)
        cache = DecoderCache()
        parts = torch.cat([vae.decode(z[:, :, i:i + 2], cache) for i in range(0, 5, 2)], 2)
    assert whole.shape == (1, 3, 20, 64, 64)
    assert rel_err(parts, whole) < 1e-6


def test_placed_vae_is_channels_last_and_computes_the_same():
    """lpm_rt.load lays the VAE's convolutions out channels-last (oneDNN's fast layout);
    encode and decode, several frames and a batch of two, match the NCHW module's."""
    import copy

    import lpm_rt
    vae = lpm_rt.load("tiny").model.vae
    assert vae.dec_out.weight.is_contiguous(memory_format=torch.channels_last)
    assert not vae.dec_out.weight.is_contiguous()
    nchw = copy.deepcopy(vae).to(memory_format=torch.contiguous_format)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, vae.cfg.vae_z_dim, 3, 8, 8, generator=g)
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        c1, c2 = DecoderCache(), DecoderCache()
        for part in (z[:, :, :2], z[:, :, 2:]):      # streaming: the cached frame carries over too
            assert rel_err(vae.decode(part, c1), nchw.decode(part, c2)) < 1e-5
        assert rel_err(vae.encode_image(img), nchw.encode_image(img)) < 1e-5


def _stream_outputs(model, n_chunks, refs):
    s, m = model.cfg.stream, model.cfg.model
    g = torch.Generator().manual_seed(2)
    n = (MEL_WIN - MEL_HOP) + (m.audio_context + s.chunk_frames) * m.vae_temporal * 1000
    ref_lat = torch.randn(1, m.vae_z_dim, refs, s.latent_h, s.latent_w, generator=g)
    state = model.open_stream(ref_lat, torch.zeros(refs, dtype=torch.long), "", seed=9)
    outs, positions = [], []
    for _ in range(n_chunks):
        a = torch.randn(1, n, generator=g) * 0.1
        outs.append(model.step(state, a, a))
        positions.append(state.pos)
    state.close()
    return torch.cat(outs, 2), positions


@pytest.mark.parametrize("kv", [KVDtype.FP32, KVDtype.FP8, KVDtype.FP8K])
def test_rope_rebasing_is_exact_and_bounded(kv):
    """Without references only relative positions matter: a stream whose history is re-based
    (time indices bounded) equals one that never re-bases."""
    rebased = _model(2, kv)
    s = rebased.cfg.stream
    never = OnlineLPM(rebased.cfg.replace(stream=s.replace(rebase_period=10_000))).eval()
    never.load_state_dict(rebased.state_dict())
    a, pos_a = _stream_outputs(rebased, 12, refs=0)
    b, pos_b = _stream_outputs(never, 12, refs=0)
    assert max(pos_a) <= s.time_limit - s.chunk_frames and max(pos_b) == 12 * s.chunk_frames
    err = rel_err(a, b)
    bound = 1e-5 if kv == KVDtype.FP32 else 6e-4       # fp8(k): K re-quantized once (measured 2.1e-4)
    assert err < bound, f"rebased vs absolute rel err {err:.2e}"
    # with references the positions stay bounded too, and nothing blows up
    c, pos_c = _stream_outputs(rebased, 12, refs=2)
    assert max(pos_c) <= s.time_limit - s.chunk_frames and torch.isfinite(c).all()


def test_fp8_k_smoothing_is_wired(monkeypatch):
    """fp8 pools smooth K with the mean of each layer's rotated reference keys, shared by every
    session on the same references; fp32 pools do not. Smoothing must not cost accuracy."""
    model = _model(1, kv=KVDtype.FP8)
    g = torch.Generator().manual_seed(2)
    m, s = model.cfg.model, model.cfg.stream
    ref = torch.randn(1, m.vae_z_dim, 2, s.latent_h, s.latent_w, generator=g)
    a, b = (model.open_stream(ref, torch.tensor([0, 2]), "smile", seed=i) for i in range(2))
    shift = a.bb_cache.k_shift
    assert shift is not None and shift.shape == (m.num_layers, m.num_heads, m.head_dim)
    assert shift.abs().amax() > 0 and b.bb_cache.k_shift is shift and a.rf_cache.k_shift is not None
    a.close(), b.close()
    assert _model(1).open_stream(ref, torch.tensor([0, 2]), "smile", seed=0).bb_cache.k_shift is None
    v8, vd = _stream_and_dense(_model(1, kv=KVDtype.FP8), n_chunks=3)
    monkeypatch.setattr("lpm_rt.cache.PagePool.k_shift", lambda self, key: None)
    v8_plain, _ = _stream_and_dense(_model(1, kv=KVDtype.FP8), n_chunks=3)
    sq = lambda x: float(20 * torch.log10(vd.norm() / (x - vd).norm()))   # noqa: E731
    assert sq(v8) > 25 and sq(v8) >= sq(v8_plain) - 1.0, f"smoothed {sq(v8):.1f} dB vs plain {sq(v8_plain):.1f} dB"
    print(f"fp8 pages: smoothed {sq(v8):.1f} dB, plain {sq(v8_plain):.1f} dB")


@pytest.mark.parametrize("kv", [KVDtype.FP32, KVDtype.FP8])
def test_step_replay_equals_the_plain_step(kv):
    """runtime.cuda_graphs: the chunk's device work from static buffers (what a CUDA graph
    replays; on a CPU it runs eagerly) gives the plain step's video bit for bit, chunk after
    chunk, while the history ring fills and turns and across RoPE re-basing (time_limit is
    passed), with the same static buffers reused."""
    def run(graphs):
        model = _model(1, kv)
        model.cfg = model.cfg.replace(runtime=model.cfg.runtime.replace(cuda_graphs=graphs))
        s, m = model.cfg.stream, model.cfg.model
        C, spl = s.chunk_frames, m.vae_temporal * 1000
        ctx = (MEL_WIN - MEL_HOP) + m.audio_context * spl
        g = torch.Generator().manual_seed(2)
        state = model.open_stream(torch.randn(1, m.vae_z_dim, 1, s.latent_h, s.latent_w, generator=g),
                                  torch.tensor([0]), "smile", seed=5)
        n = s.time_limit // C + 2
        video = [model.step(state, torch.randn(1, C * spl + ctx, generator=g) * 0.1,
                            torch.randn(1, C * spl + ctx, generator=g) * 0.1) for _ in range(n)]
        replay = state.replay
        state.close()
        return torch.cat(video, 2), replay

    plain, none = run(False)
    replayed, replay = run(True)
    assert none is None and replay is not None and replay.graph is None       # CPU: no capture
    assert torch.equal(plain, replayed)


def test_fixed_noise_reuses_the_sessions_first_draw():
    """runtime.noise: "fresh" draws new noise for every chunk; "fixed" draws once per session
    (from its seed) and every chunk starts from it. The first chunk is the same either way."""
    def run(noise, seed=5, n=3):
        model = _model(2)
        model.cfg = model.cfg.replace(runtime=model.cfg.runtime.replace(noise=noise))
        s, m = model.cfg.stream, model.cfg.model
        spl = s.chunk_frames * m.vae_temporal * 1000
        ctx = (MEL_WIN - MEL_HOP) + m.audio_context * m.vae_temporal * 1000
        seen, chunk_inputs = [], model._chunk_inputs

        def spy(state, a, b):
            inputs = chunk_inputs(state, a, b)
            seen.append(inputs.noises.clone())
            return inputs
        model._chunk_inputs = spy
        g = torch.Generator().manual_seed(2)
        state = model.open_stream(torch.randn(1, m.vae_z_dim, 1, s.latent_h, s.latent_w, generator=g),
                                  torch.tensor([0]), "smile", seed=seed)
        video = [model.step(state, torch.randn(1, spl + ctx, generator=g) * 0.1,
                            torch.randn(1, spl + ctx, generator=g) * 0.1) for _ in range(n)]
        state.close()
        return video, seen

    fresh, fresh_noise = run("fresh")
    fixed, fixed_noise = run("fixed")
    assert all(torch.equal(fixed_noise[0], x) for x in fixed_noise[1:])
    assert not torch.equal(fresh_noise[0], fresh_noise[1]) and torch.equal(fresh_noise[0], fixed_noise[0])
    assert torch.equal(fresh[0], fixed[0]) and not torch.equal(fresh[1], fixed[1])
    _, other = run("fixed", seed=6)
    assert not torch.equal(other[0], fixed_noise[0])
    with pytest.raises(ValueError, match="fresh/fixed"):
        model = _model(2)
        model.cfg.runtime.replace(noise="frozen")
