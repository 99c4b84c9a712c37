"""Audio guidance in the stream (StreamConfig.speaker_guidance / listener_guidance): each audio
cross-attention's output becomes a0 + g (a - a0), a0 its output with silence (dit.GuidedKV)."""

import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.model.audio import MEL_HOP, MEL_WIN
from lpm_rt.model.dit import Attention, GuidedKV
from lpm_rt.model.online import OnlineLPM


def test_guided_cross_attention_is_silence_plus_gain_times_the_difference():
    torch.manual_seed(0)
    att = Attention(32, 4, 1e-6, kv_dim=24)
    x = torch.randn(3, 5, 32)
    kv, null = (att.raw_kv(torch.randn(3, 6, 24)) for _ in range(2))
    a, a0 = att.cross_heads(x, kv), att.cross_heads(x, null)
    assert (a - a0).abs().max() > 1e-2
    for g in (0.0, 2.5):
        got = att.cross_heads(x, GuidedKV(kv, null, g))
        torch.testing.assert_close(got, a0 + g * (a - a0), rtol=1e-5, atol=1e-6)
    # the output projection is affine: guiding the heads scales the audio-dependent residual
    got = att.cross(x, GuidedKV(kv, null, 3.0))
    torch.testing.assert_close(got, att.cross(x, null) + 3.0 * (att.cross(x, kv) - att.cross(x, null)),
                               rtol=1e-4, atol=1e-5)


def _stream(speaker=1.0, listener=1.0, silent_speaker=False, chunks=2):
    cfg = preset("tiny")
    cfg = cfg.replace(stream=cfg.stream.replace(speaker_guidance=speaker, listener_guidance=listener))
    model = OnlineLPM(cfg).init_weights(3).eval()
    s, m = cfg.stream, cfg.model
    n = (MEL_WIN - MEL_HOP) + (m.audio_context + s.chunk_frames) * m.vae_temporal * 1000
    g = torch.Generator().manual_seed(1)
    state = model.open_stream(torch.randn(1, m.vae_z_dim, 1, s.latent_h, s.latent_w, generator=g),
                              torch.tensor([0]), "smile", seed=5)
    assert (state.null_audio is None) == (speaker == listener == 1.0)
    out = []
    for _ in range(chunks):
        spk = torch.randn(1, n, generator=g) * 0.1
        lis = torch.randn(1, n, generator=g) * 0.1
        out.append(model.step(state, torch.zeros_like(spk) if silent_speaker else spk, lis))
    state.close()
    return torch.cat(out, 2)


def test_speaker_guidance_leaves_a_silent_speaker_exactly_alone():
    """Silence is the unconditional side: with the speaker silent, any speaker gain gives the
    unguided stream bit for bit; the listener gain still acts on the listener track, and a
    speaking track is changed by the speaker gain."""
    plain = _stream(silent_speaker=True)
    assert torch.equal(_stream(speaker=3.0, silent_speaker=True), plain)
    assert not torch.equal(_stream(listener=3.0, silent_speaker=True), plain)
    speech = _stream()
    guided = _stream(speaker=3.0)
    assert (guided - speech).abs().mean() > 1e-3 * speech.abs().mean()


def test_guidance_out_of_range_is_refused():
    s = preset("tiny").stream
    for kw in ({"speaker_guidance": -1.0}, {"listener_guidance": 50.0}):
        with pytest.raises(ValueError, match="guidance"):
            s.replace(**kw)
