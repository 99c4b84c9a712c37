"""The synthetic world: determinism, behaviour labels that follow the audio, references, dataset I/O."""

import numpy as np
import pytest

from lpm_rt.world.analyzer import identity_features
from lpm_rt.world.character import EXPRESSIONS, VIEWS, Character
from lpm_rt.world.conversation import Conversation
from lpm_rt.world.dataset import WorldDataset, write_dataset
from lpm_rt.world.render import Scene, render_reference


@pytest.fixture(scope="module")
def conv():
    return Conversation.generate(11, 12.0, mode="conversation", prompt="calm")


def test_same_seed_same_frames_and_audio(conv):
    again = Conversation.generate(11, 12.0, mode="conversation", prompt="calm")
    assert np.array_equal(conv.self_audio, again.self_audio)
    assert np.array_equal(conv.partner_audio, again.partner_audio)
    assert np.array_equal(conv.render(64)[::10], again.render(64)[::10])
    other = Conversation.generate(12, 12.0, mode="conversation", prompt="calm")
    assert not np.array_equal(conv.self_audio, other.self_audio)


def test_shapes_and_sizes(conv):
    assert conv.num_frames == 12 * 24
    assert conv.self_audio.shape == conv.partner_audio.shape == (12 * 16000,)
    assert np.isfinite(conv.self_audio).all() and np.abs(conv.self_audio).max() <= 1.0
    for size in (32, (48, 80)):
        v = render_reference(conv.character, size=size)
        assert v.shape == ((size, size, 3) if isinstance(size, int) else (*size, 3))
        assert v.dtype == np.uint8


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mouth_follows_own_speech(seed):
    c = Conversation.generate(seed, 15.0, mode="conversation")
    L = c.labels
    assert np.corrcoef(L["mouth_open"], L["self_env"])[0, 1] > 0.7
    only_partner = (L["who_speaks"] == "partner") & ~L["backchannel"]
    assert only_partner.sum() > 24
    assert np.all(L["mouth_open"][only_partner] < 0.1)
    assert L["mouth_open"][L["who_speaks"] == "self"].max() > 0.5


def test_listening_behaviour():
    L = Conversation.generate(5, 30.0, mode="listening", backchannels=False).labels
    listening = L["who_speaks"] == "partner"
    assert L["nod"][listening].mean() > 0.1          # nods while the partner talks
    # every nod is a response: partner speech within the preceding second
    recent = np.convolve(listening.astype(float), np.ones(24), mode="full")[:len(listening)] > 0
    assert recent[L["nod"]].all()
    assert L["blink"].sum() >= 3
    assert L["gaze_at_partner"][listening].all()
    assert L["mouth_open"].max() == 0.0               # self never speaks in this mode


def test_prompt_sets_expression():
    for tag, expr in (("smile", "smile"), ("sad", "sad"), ("surprised", "surprise"), ("calm", "neutral")):
        assert set(Conversation.generate(3, 2.0, prompt=tag).labels["expression"]) == {expr}


def test_reference_views_differ_but_identity_holds():
    scene = Scene.random(0)
    chars = [Character.random(s) for s in range(5)]
    feats, owner = [], []
    for i, ch in enumerate(chars):
        imgs = [render_reference(ch, v, "neutral", 128, scene) for v in VIEWS]
        imgs += [render_reference(ch, "front", e, 128, scene) for e in EXPRESSIONS[1:]]
        for a in range(len(imgs)):
            for b in range(a + 1, len(imgs)):
                assert not np.array_equal(imgs[a], imgs[b])
        feats.append(identity_features(np.stack(imgs)))
        owner += [i] * len(imgs)
    f = np.concatenate(feats)
    owner = np.array(owner)
    d = np.linalg.norm(f[:, None] - f[None], axis=-1)
    same = owner[:, None] == owner[None]
    off = ~np.eye(len(f), dtype=bool)
    assert d[same & off].mean() < 0.6 * d[~same].mean()


def test_dataset_round_trip(tmp_path):
    index = write_dataset(tmp_path, clips=1, seconds=1.5, seed=4, size=64, progress=False)
    ds = WorldDataset(tmp_path)
    assert len(ds) == 1 and ds.backend == "pyav"
    item = ds[0]
    n = index["clips"][0]["frames"]
    assert n == 36 and item["video"].shape == (n, 64, 64, 3)
    assert len(item["labels"]["mouth_open"]) == n
    assert item["self_audio"].shape == (24000,)
    ref = Conversation.generate(index["clips"][0]["seed"], 1.5, mode=index["clips"][0]["mode"])
    np.testing.assert_allclose(item["labels"]["mouth_open"], ref.labels["mouth_open"], atol=1e-4)
    assert list(item["labels"]["who_speaks"]) == list(ref.labels["who_speaks"])
    np.testing.assert_allclose(item["self_audio"], ref.self_audio, atol=1.0 / 32767)
    video = ref.render(64)
    assert np.abs(item["video"].astype(int) - video).mean() < 4.0   # H.264 at crf 18
    kinds = [k for _, k in item["references"]]
    assert kinds[0] == "global" and "body_view" in kinds and "face_expression" in kinds
    assert item["references"][0][0].shape == (64, 64, 3)
