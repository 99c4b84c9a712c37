"""The shipped demo model (lpm_rt/assets/demo): it loads verified and says it is trained, it
renders the reference character (not the untrained preset's noise) steadily over time, and
speech it never trained on (espeak-ng phrases from an unseen voice and seed; the world's
synthesizer when espeak-ng is missing) moves the lower face more than silence does."""

import numpy as np
import pytest

import lpm_rt
from lpm_rt.assets import default_character
from lpm_rt.loader import SHIPPED_DEMO

pytestmark = pytest.mark.skipif(not (SHIPPED_DEMO / "config.json").is_file(), reason="no shipped demo model")


def _speech(seconds: float):
    from lpm_rt.world import audio as A
    rng = np.random.default_rng(987_654_321)
    voice = A.Voice.random(rng)
    make = A.espeak_phrase if A.espeak_available() else A.synth_phrase
    out = []
    while sum(len(p) for p in out) < seconds * A.SR:
        out.append(make(rng, voice, 6).audio)
    return np.concatenate(out)[: int(seconds * A.SR)].astype(np.float32), A.SR


def _stream(avatar, pcm, rate):
    refs = default_character(avatar.spec.height, avatar.spec.width)
    with avatar.open_session(references=refs, prompt="calm", seed=0) as sess:
        sess.push_audio(pcm, rate, track="speaker")
        sess.flush()
        return np.stack([f.image for f in sess.frames()]).astype(np.float32), refs[0].image.astype(np.float32)


@pytest.fixture(scope="module")
def streams():
    pcm, rate = _speech(3.0)
    demo = lpm_rt.load("demo")
    talk, ref = _stream(demo, pcm, rate)
    quiet, _ = _stream(demo, np.zeros_like(pcm), rate)
    untrained, _ = _stream(_untrained(), pcm, rate)
    return dict(demo=demo, talk=talk[12:], quiet=quiet[12:], untrained=untrained[12:], ref=ref)


def _untrained():
    from lpm_rt.config import preset
    from lpm_rt.model.online import OnlineLPM
    from lpm_rt.session import Avatar
    return Avatar(OnlineLPM(preset("demo")).init_weights(0).eval(), trained=False, source="untrained demo preset")


def _mouth(v):
    H, W = v.shape[1:3]
    return v[:, int(0.5 * H):int(0.8 * H), int(0.3 * W):int(0.7 * W)]


def test_shipped_demo_is_trained_and_renders_the_reference(streams):
    assert streams["demo"].trained and "shipped" in streams["demo"].source
    err = lambda v: float(np.abs(v.mean(0) - streams["ref"]).mean())               # noqa: E731
    trained, untrained = err(streams["talk"]), err(streams["untrained"])
    # measured: 10.3 / 255 for the shipped model (11.4 before the blend, 11.0 before its temporal fine-tune,
    # 9.8 with the decoder before, the model before 8.5), the untrained preset several times that
    assert trained < 15.0 and trained < 0.5 * untrained, (trained, untrained)
    flicker = float(np.abs(np.diff(streams["talk"], axis=0)).mean())               # measured 0.91 / 255 (0.98, 1.26 before)
    assert flicker < 8.0, flicker


def test_shipped_demo_responds_to_unseen_speech(streams):
    # measured (lower-face motion while talking / in silence, and talk vs silence difference, /255):
    # the espeak-ng 1.51 program 1.26 / 0.74 = 1.70x and 4.22; the espeakng-loader wheel's library
    # (the dev extras install it) 2.11x and 5.83; the world's synthesizer (neither present) 1.61x and
    # 5.41. Before the blend (issue #6): 1.54x and 4.08 with the program, 1.85x and 5.39 with the
    # wheel, 1.42x and 5.66 with the synthesizer; before the temporal fine-tune 1.55x and 3.8.
    motion = lambda v: float(np.abs(np.diff(_mouth(v), axis=0)).mean())           # noqa: E731
    diff = float(np.abs(_mouth(streams["talk"]) - _mouth(streams["quiet"])).mean())
    assert motion(streams["talk"]) > 1.5 * motion(streams["quiet"]) and diff > 4.0, \
        (motion(streams["talk"]), motion(streams["quiet"]), diff)
