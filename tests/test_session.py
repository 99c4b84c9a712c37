"""Session API: frame counts, pts, audio alignment, errors that leave the session usable."""

import math

import numpy as np
import pytest

import lpm_rt
from lpm_rt import CapacityError, InvalidAudio, InvalidReference, Reference
from lpm_rt.config import RuntimeConfig


@pytest.fixture(scope="module")
def avatar():
    return lpm_rt.load("tiny", runtime=RuntimeConfig(max_sessions=3))


def tone(seconds, rate=24000, f=220.0):
    return (0.3 * np.sin(2 * np.pi * f * np.arange(int(round(seconds * rate))) / rate)).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.05, 0.3333, 0.5, 1.0, 1.27])
def test_frame_count_pts_and_audio(avatar, seconds):
    pcm = tone(seconds)
    with avatar.open_session() as s:
        s.push_audio(pcm, 24000)
        s.flush()
        frames = list(s.frames())
    n = math.ceil(seconds * 24 - 1e-9)
    assert len(frames) == n
    assert [f.index for f in frames] == list(range(n))
    assert all(abs(f.pts - f.index / 24) < 1e-12 for f in frames)
    assert all(f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    audio = np.concatenate([f.audio for f in frames])
    assert len(audio) == n * 1000
    assert np.array_equal(audio[:len(pcm)], pcm)               # 24 kHz in: sample exact
    assert not audio[len(pcm):].any()                          # padding is silence


def test_frames_arrive_incrementally_and_match_one_shot(avatar):
    pcm = tone(1.0)
    with avatar.open_session(seed=3) as s:
        got = []
        for piece in np.array_split(pcm, 37):                  # ~27 ms pieces, as a live feed
            s.push_audio(piece, 24000)
            got += list(s.frames())
        assert len(got) == 24 - 24 % 8                         # whole chunks only, before flush
        s.flush()
        got += list(s.frames())
    with avatar.open_session(seed=3) as s:
        s.push_audio(pcm, 24000)
        s.flush()
        once = list(s.frames())
    assert len(got) == len(once) == 24
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, once))


def test_resampled_input_and_int16(avatar):
    pcm16 = (tone(0.5, 16000) * 32767).astype(np.int16)
    with avatar.open_session() as s:
        s.push_audio(pcm16, 16000)
        s.flush()
        frames = list(s.frames())
    assert len(frames) == 12
    audio = np.concatenate([f.audio for f in frames])
    ref = tone(0.5)
    corr = np.corrcoef(audio[1000:11000], ref[1000:11000])[0, 1]
    assert corr > 0.99


def test_listener_only_covers_the_timeline(avatar):
    with avatar.open_session() as s:
        s.push_audio(tone(0.5), 24000, track="listener")
        s.flush()
        frames = list(s.frames())
    assert len(frames) == 12 and not np.concatenate([f.audio for f in frames]).any()


BAD_AUDIO = [
    (np.array([0.1, np.nan], np.float32), 24000, "speaker", "NaN"),
    (np.array([0.1, np.inf], np.float32), 24000, "speaker", "NaN or inf"),
    (np.zeros((2, 100), np.float32), 24000, "speaker", "1-D"),
    (np.zeros(100, np.int32), 24000, "speaker", "dtype"),
    (np.zeros(100, np.float32), 7999, "speaker", "sample_rate"),
    (np.zeros(100, np.float32), 192001, "speaker", "sample_rate"),
    (np.zeros(100, np.float32), 16000.5, "speaker", "sample_rate"),
    (np.zeros(100, np.float32), 24000, "robot", "track"),
    (np.full(100, 1.5, np.float32), 24000, "speaker", r"\[-1, 1\]"),
]


@pytest.mark.parametrize("pcm,rate,track,msg", BAD_AUDIO)
def test_bad_audio_is_rejected_and_session_stays_usable(avatar, pcm, rate, track, msg):
    with avatar.open_session() as s:
        s.push_audio(tone(0.4), 24000)
        before = list(s.frames())
        with pytest.raises(InvalidAudio, match=msg):
            s.push_audio(pcm, rate, track=track)
        s.push_audio(tone(0.1), 24000)
        s.flush()
        after = list(s.frames())
    assert len(before) + len(after) == 12                      # nothing lost, nothing extra


@pytest.mark.parametrize("refs,msg", [
    ([np.zeros((64, 64), np.uint8)], "HxWx3"),
    ([np.zeros((64, 64, 3), np.float32)], "uint8"),
    ([np.zeros((64, 64, 3), np.uint8)] * 4, "slots"),
    (["/nonexistent/face.png"], "cannot read"),
    ([Reference(np.zeros((64, 64, 3), np.uint8), kind="torso")], "kind"),
])
def test_bad_references(avatar, refs, msg):
    free = avatar.model.pools[0].free_pages
    with pytest.raises(InvalidReference, match=msg):
        avatar.open_session(references=refs)
    assert avatar.model.pools[0].free_pages == free             # nothing leaked


def test_references_from_files_and_kinds(avatar, tmp_path):
    import av
    img = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    path = tmp_path / "ref.png"
    with av.open(str(path), "w") as c:                          # write a PNG with PyAV
        st = c.add_stream("png")
        st.width, st.height, st.pix_fmt = 100, 80, "rgb24"
        for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    with avatar.open_session(references=[str(path), Reference(img, "face_expression")]) as s:
        s.push_audio(tone(0.2), 24000)
        s.flush()
        assert len(list(s.frames())) == 5


def test_interrupt_drops_queued_speech(avatar):
    with avatar.open_session() as s:
        s.push_audio(tone(0.5), 24000)          # 12 frames: one chunk of 8 ready
        first = list(s.frames())
        assert len(first) == 8
        pos = s.interrupt()                     # the 4 queued frames' audio is dropped
        assert pos == pytest.approx(8 / 24)
        s.flush()
        assert list(s.frames()) == []
        s.push_audio(tone(0.34), 24000)         # a new segment continues the stream
        s.flush()
        nxt = list(s.frames())
    assert len(nxt) == math.ceil(0.34 * 24) and nxt[0].index == 8


def test_capacity_error_then_recovery():
    av_ = lpm_rt.load("tiny", runtime=RuntimeConfig(max_sessions=1))
    rng = np.random.default_rng(0)
    refs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    s1 = av_.open_session(references=refs)
    with pytest.raises(CapacityError):
        av_.open_session(references=refs[:1])
    s1.close()
    with av_.open_session(references=refs[:1]) as s2:
        s2.push_audio(tone(0.1), 24000)
        s2.flush()
        assert len(list(s2.frames())) == 3


def test_sessions_with_same_references_share_pages(avatar):
    pool = avatar.model.pools[0]
    free0 = pool.free_pages
    img = np.full((64, 64, 3), 128, np.uint8)
    a = avatar.open_session(references=[img])
    used_a = free0 - pool.free_pages
    b = avatar.open_session(references=[img])
    used_b = free0 - pool.free_pages - used_a
    assert used_b == used_a - a._state.bb_cache.ppf            # b did not pin its own reference pages
    a.close(), b.close()
    assert pool.free_pages == free0


def test_closed_session_refuses_use(avatar):
    s = avatar.open_session()
    s.close()
    with pytest.raises(lpm_rt.LPMError):
        s.push_audio(tone(0.1), 24000)


def test_asyncio_form(avatar):
    import asyncio
    from lpm_rt.aio import AsyncSession, AudioFrame, EndOfSegment, VideoFrame

    async def main():
        events = []
        async with AsyncSession(avatar.open_session()) as s:
            for piece in np.array_split(tone(0.5, 16000), 10):
                await s.push_audio(piece, 16000)
            with pytest.raises(InvalidAudio):
                await s.push_audio(np.array([np.nan], np.float32), 16000)
            await s.end_segment()
            while True:
                ev = await s.__anext__()
                events.append(ev)
                if isinstance(ev, EndOfSegment):
                    break
        return events

    events = asyncio.run(main())
    vids = [e for e in events if isinstance(e, VideoFrame)]
    auds = [e for e in events if isinstance(e, AudioFrame)]
    assert len(vids) == len(auds) == 12 and isinstance(events[-1], EndOfSegment)
    assert [v.index for v in vids] == list(range(12))


def test_prompt_as_precomputed_embeddings(avatar):
    d = avatar.cfg.model.text_dim
    emb = np.random.default_rng(0).standard_normal((5, d)).astype(np.float32)
    outs = []
    for prompt in (emb, emb * 0):
        with avatar.open_session(prompt=prompt, seed=1) as s:
            s.push_audio(tone(0.34), 24000)
            s.flush()
            outs.append(np.stack([f.image for f in s.frames()]))
    assert outs[0].shape == (9, 64, 64, 3) and not np.array_equal(outs[0], outs[1])
    with pytest.raises(lpm_rt.LPMError, match="embeddings"):
        avatar.open_session(prompt=np.zeros((3, d + 1), np.float32))
