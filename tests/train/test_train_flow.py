"""The trainer's chunk-causal forms equal the runtime's streaming step."""

import torch

from lpm_rt.config import preset
from lpm_rt.model.audio import MEL_HOP, MEL_WIN, log_mel
from lpm_rt.model.online import OnlineLPM
from lpm_rt.train.flow import Cond, causal_forward, rollout, two_copy_mask


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _setup(n_chunks=3, refs=2):
    cfg = preset("tiny")
    model = OnlineLPM(cfg).init_weights(3).eval()
    s, m = cfg.stream, cfg.model
    spl = m.vae_temporal * 1000
    ctx = (MEL_WIN - MEL_HOP) + m.audio_context * spl
    g = torch.Generator().manual_seed(1)
    n = n_chunks * s.chunk_frames * spl
    spk, lis = torch.randn(1, n, generator=g) * 0.1, torch.randn(1, n, generator=g) * 0.1
    pad = lambda a: torch.cat([torch.zeros(1, ctx), a], 1)  # noqa: E731
    ref_lat = torch.randn(1, m.vae_z_dim, refs, s.latent_h, s.latent_w, generator=g)
    kinds = torch.tensor([0, 2][:refs])
    cond = Cond(torch.tensor([[3]]), (log_mel(pad(spk), m.n_mels), log_mel(pad(lis), m.n_mels)), ref_lat, kinds)
    return model, cond, (spk, lis, pad, ctx, spl)


def test_causal_forward_equals_runtime_stream():
    """Last-step velocities of every streamed chunk == the two-copy forward on the captured inputs."""
    model, cond, (spk, lis, pad, ctx, spl) = _setup()
    s = model.cfg.stream
    C = s.chunk_frames
    state = model.open_stream(cond.refs, cond.ref_kinds, "smile", seed=5)   # "smile" = tag 3
    cap = []
    for c in range(3):
        a, b = c * C * spl, (c + 1) * C * spl + ctx
        model.step(state, pad(spk)[:, a:b], pad(lis)[:, a:b], capture=cap)
    state.close()
    x = torch.cat([c[0] for c in cap], 2)
    v_stream = torch.cat([c[1] for c in cap], 2)
    with torch.no_grad():
        v = causal_forward(model.backbone, x, x, torch.full((1, x.shape[2]), s.sigmas[-1]), cond, s)
    assert torch.isfinite(v).all()
    assert _rel(v, v_stream) < 1e-5


def test_query_copy_equals_direct_prefix_forward():
    """A query chunk at another noise level sees exactly [history chunks before it | itself]."""
    model, cond, _ = _setup()
    s = model.cfg.stream
    C, Fr = s.chunk_frames, 3 * s.chunk_frames
    g = torch.Generator().manual_seed(2)
    shape = (1, 16, Fr, s.latent_h, s.latent_w)
    x_hist, x_q = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sig_q = torch.tensor([[0.9] * C + [0.5] * C + [0.7] * C])
    net = model.backbone
    with torch.no_grad():
        v = causal_forward(net, x_hist, x_q, sig_q, cond, s)
        for c in range(3):
            seq = torch.cat([x_hist[:, :, :c * C], x_q[:, :, c * C:(c + 1) * C]], 2)
            t = torch.cat([torch.full((1, c * C), s.history_t), 1000 * sig_q[:, c * C:(c + 1) * C]], 1)
            mels = tuple(m[:, :(net.cfg.audio_context + (c + 1) * C) * 16] for m in cond.mels)
            vd = net(seq, t, cond.context(net), mels, cond.refs, cond.ref_kinds, chunk_frames=C,
                     window=s.history_frames, ref_time_index=s.ref_time_index)[:, :, c * C:]
            assert _rel(v[:, :, c * C:(c + 1) * C], vd) < 1e-5, c
        # guard: the history matters (a different history changes later chunks, not chunk 0)
        v2 = causal_forward(net, x_hist + 1.0, x_q, sig_q, cond, s)
    assert _rel(v2[:, :, :C], v[:, :, :C]) < 1e-6
    assert _rel(v2[:, :, C:], v[:, :, C:]) > 1e-3


def test_kv_rollout_matches_causal_forward():
    model, cond, _ = _setup()
    s = model.cfg.stream
    with torch.no_grad():
        r = rollout(model.backbone, cond, 3 * s.chunk_frames, s, torch.Generator().manual_seed(0))
        Fr = r.x_hist.shape[2]
        v = causal_forward(model.backbone, r.x_hist, r.inputs[-1], torch.full((1, Fr), s.sigmas[-1]), cond, s)
    assert _rel(r.x_hist - s.sigmas[-1] * v, r.x0) < 1e-5


def test_two_copy_mask_shape_and_rules():
    m = two_copy_mask(6, 2, 1, chunk=2, window=2)
    assert m.shape == (10, 10)
    # query frame 4 (chunk 2): history frames 2, 3 (window 2 before frame 4), own chunk 4, 5
    row = m[6 + 2]
    assert row[:6].tolist() == [False, False, True, True, False, False]
    assert row[6:].tolist() == [False, False, True, True]
