"""Real speech from espeak-ng (the program, or the library of the espeakng-loader wheel; skipped
where neither is installed)."""

import numpy as np
import pytest

from lpm_rt.world import Conversation
from lpm_rt.world.audio import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not available")


def test_espeak_speech_drives_the_mouth():
    c = Conversation.generate(3, 6.0, mode="speaking", voice_backend="espeak")
    a = c.self_audio
    assert np.isfinite(a).all() and np.abs(a).max() > 0.1
    spf = c.sample_rate // c.fps
    env = np.sqrt(np.add.reduceat(a[: c.num_frames * spf] ** 2, np.arange(0, c.num_frames * spf, spf)) / spf)
    mouth = np.asarray(c.labels["mouth_open"], np.float64)
    r = np.corrcoef(env, mouth)[0, 1]
    assert r > 0.5, f"mouth opening vs espeak speech envelope corr {r:.2f}"
    assert not np.asarray(c.partner_audio).any()             # speaking mode: the partner is silent
