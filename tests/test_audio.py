"""Audio front end: streaming resampler and causal log-mel."""

import numpy as np
import pytest
import torch

from lpm_rt.model.audio import AUDIO_RATE, MEL_HOP, MEL_WIN, Resampler, log_mel


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000, 192000])
def test_resampler_preserves_a_tone(rate):
    f = 440.0
    x = np.sin(2 * np.pi * f * np.arange(rate) / rate).astype(np.float32)   # 1 s
    r = Resampler(rate, AUDIO_RATE)
    y = np.concatenate([r.push(x), r.flush()])
    assert abs(len(y) - AUDIO_RATE) <= 1
    ref = np.sin(2 * np.pi * f * np.arange(len(y)) / AUDIO_RATE)
    mid = slice(500, -500)                                                  # edges see zero padding
    err = np.abs(y[mid] - ref[mid]).max()
    assert err < 2e-2, f"max err {err}"


def test_resampler_pieces_equal_whole():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32) * 0.1
    whole = Resampler(16000)
    a = np.concatenate([whole.push(x), whole.flush()])
    r = Resampler(16000)
    cuts = np.sort(rng.choice(len(x), 20, replace=False))
    b = np.concatenate([r.push(p) for p in np.split(x, cuts)] + [r.flush()])
    assert len(a) == len(b) and np.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
def test_resampler_phase_table_equals_the_direct_kernel(rate, monkeypatch):
    """The tabulated kernel phases (the streaming fast path) give the direct windowed-sinc
    evaluation's samples, edges included, whatever the piece sizes."""
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate // 2).astype(np.float32) * 0.1
    cuts = np.sort(rng.choice(len(x), 12, replace=False))

    def run():
        r = Resampler(rate)
        return r, np.concatenate([r.push(p) for p in np.split(x, cuts)] + [r.flush()])

    tabled, a = run()
    assert tabled.table.shape == (tabled.q, 2 * tabled.half)
    monkeypatch.setattr(Resampler, "TABLE_LIMIT", 0)
    direct, b = run()
    assert direct.table.shape[0] == 0
    assert len(a) == len(b) and np.abs(a - b).max() < 1e-6


def test_log_mel_is_causal_and_framed():
    x = torch.randn(1, (MEL_WIN - MEL_HOP) + 16 * MEL_HOP)
    m = log_mel(x, 32)
    assert m.shape == (1, 16, 32) and torch.isfinite(m).all()
    y = x.clone()
    y[:, -MEL_HOP:] = 0                                  # changing the last hop changes only the last frame
    m2 = log_mel(y, 32)
    assert torch.equal(m[:, :-1], m2[:, :-1]) and not torch.equal(m[:, -1], m2[:, -1])
