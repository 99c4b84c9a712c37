"""The data adapter: clips -> tensors laid out as the model and the runtime expect."""

import numpy as np
import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.model.audio import AUDIO_RATE, MEL_HOP, MEL_WIN, log_mel
from lpm_rt.train.data import Clip, batch_indices, collate

from blobsrc import BlobSource


def test_collate_shapes_and_layout():
    cfg = preset("tiny")
    m = cfg.model
    src = BlobSource(cfg, 16)
    b = collate([src.clip(0), src.clip(1)], cfg)
    assert b.video.shape == (2, 3, 16, 64, 64)
    assert b.video.min() >= -1 and b.video.max() <= 1
    for mel in b.mels:
        assert mel.shape == (2, (m.audio_context + 4) * 16, m.n_mels)
        assert torch.isfinite(mel).all()
    assert b.ref_images.shape == (2, 2, 3, 64, 64)
    assert b.ref_kinds.tolist() == [0, 2]
    assert b.tag_ids.shape[0] == 2 and b.tag_ids.dtype == torch.long


def test_mel_matches_runtime_layout():
    """A clip's speaker mel == log_mel of [context | clip audio] resampled to 24 kHz, the runtime's
    input; the real audio before the clip is used as context."""
    cfg = preset("tiny")
    m = cfg.model
    n = 16 * 1000                                         # 16 video frames at 24 kHz
    ctx = (MEL_WIN - MEL_HOP) + m.audio_context * 4000
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(ctx + n) * 0.1).astype(np.float32)
    clip = Clip(np.zeros((16, 64, 64, 3), np.uint8), a, np.zeros_like(a), AUDIO_RATE, [], [], "", ctx)
    b = collate([clip], cfg)
    ref = log_mel(torch.from_numpy(a)[None], m.n_mels)
    assert b.mels[0].shape == ref.shape
    assert torch.allclose(b.mels[0], ref, atol=1e-4)
    assert b.ref_images.shape[1] == 0 and b.ref_kinds.numel() == 0
    # zero lead: the context is silence
    clip2 = Clip(clip.video, a[ctx:], a[ctx:] * 0, AUDIO_RATE, [], [], "", 0)
    ref2 = log_mel(torch.cat([torch.zeros(1, ctx), torch.from_numpy(a[ctx:])[None]], 1), m.n_mels)
    assert torch.allclose(collate([clip2], cfg).mels[0], ref2, atol=1e-4)


def test_batch_indices_disjoint_and_deterministic():
    a = batch_indices(0, "teacher", 3, 0, 2, 2)
    b = batch_indices(0, "teacher", 3, 1, 2, 2)
    assert not set(a) & set(b)
    assert a == batch_indices(0, "teacher", 3, 0, 2, 2)
    assert a != batch_indices(0, "vae", 3, 0, 2, 2)


def _check_world_clip(clip, cfg, frames):
    assert clip.video.shape == (frames, 64, 64, 3) and clip.video.dtype == np.uint8
    assert clip.ref_kinds == ["global", "body_view", "face_expression"]
    assert len(clip.refs) == 3 and clip.refs[0].shape == (64, 64, 3)
    assert clip.audio_lead > 0 and len(clip.audio_self) == len(clip.audio_partner)
    b = collate([clip], cfg)
    assert b.mels[0].shape == (1, (cfg.model.audio_context + frames // 4) * 16, cfg.model.n_mels)
    assert b.video.std() > 0.01 and b.ref_kinds.tolist() == [0, 1, 2]


def test_world_source_adapter():
    from lpm_rt.train.data import WorldSource
    cfg = preset("tiny")
    _check_world_clip(WorldSource(cfg, 8).clip(5), cfg, 8)


def test_dataset_source_reads_the_world_writer(tmp_path):
    from lpm_rt.train.data import DatasetSource
    from lpm_rt.world.dataset import write_dataset
    cfg = preset("tiny")
    write_dataset(tmp_path, clips=2, seconds=2.0, seed=3, size=64, progress=False)
    src = DatasetSource(cfg, tmp_path, 8, backend="pyav")
    assert len(src) == 2
    _check_world_clip(src.clip(7), cfg, 8)
    # the crop is decoded exactly: same frames as decoding the whole file and slicing
    from lpm_rt.media import read_video
    c = src.clip(1)
    whole = read_video(src.ds.clip_dir(1) / "video.mp4")
    starts = [i for i in range(len(whole) - 7) if np.array_equal(whole[i:i + 8], c.video)]
    assert starts, "crop not found in the decoded video"


class _Counting(BlobSource):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def clip(self, index):
        self.calls.append(index)
        return super().clip(index)


def test_encoded_pool_reuses_slots_and_matches_fresh_batches():
    """A pooled batch is the batch encode(collate(clips)) gives for clips i % size, and each slot
    is generated and encoded once, whatever index first draws it (resumed runs see the same data)."""
    from lpm_rt.model.online import OnlineLPM
    from lpm_rt.train.base import encode_batch
    from lpm_rt.train.data import EncodedPool

    cfg = preset("tiny")
    vae = OnlineLPM(cfg).init_weights(0).vae.eval()
    src = _Counting(cfg, 2 * cfg.model.vae_temporal)
    encode = lambda b: encode_batch(vae, b)                                # noqa: E731
    pool = EncodedPool(src, cfg, encode, size=3)
    z, cond = pool.batch([7, 5])                                          # slots 1 and 2
    z_ref, cond_ref = encode(collate([src.clip(1), src.clip(2)], cfg))
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cond.refs, cond_ref.refs, rtol=1e-5, atol=1e-6)
    for got, want in zip(cond.mels, cond_ref.mels):
        torch.testing.assert_close(got, want)
    assert torch.equal(cond.tag_ids[:, :1], cond_ref.tag_ids[:, :1]) and torch.equal(cond.ref_kinds, cond_ref.ref_kinds)
    src.calls.clear()
    pool.batch([4, 8, 10])                                                # slots 1, 2, 1: cached
    assert src.calls == [] and len(pool) == 2
    pool.batch([0])
    assert src.calls == [0] and len(pool) == 3
    fresh = EncodedPool(src, cfg, encode, size=0)                         # size 0: nothing kept
    src.calls.clear()
    fresh.batch([4, 4])
    assert src.calls == [4, 4] and len(fresh) == 0


def test_world_source_voice_and_focus(monkeypatch):
    from lpm_rt.train.data import WorldSource

    cfg = preset("tiny")
    with pytest.raises(ValueError, match="voice"):
        WorldSource(cfg, 4, voice="robot")
    with pytest.raises(ValueError, match="focus"):
        WorldSource(cfg, 4, focus=1.5)
    src = WorldSource(cfg, 4, focus=1.0)
    seen = []
    real = src._gen

    def spy(*a, **k):
        seen.append((k["character"], k["voice_backend"]))
        return real(*a, **k)
    monkeypatch.setattr(src, "_gen", spy)
    src.clip(0), src.clip(1)
    assert all(c is src._focus_char and v == "synth" for c, v in seen)
    src.focus, seen[:] = 0.0, []
    src.clip(0)
    assert seen[0][0] is None
