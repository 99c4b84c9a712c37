"""asyncio form of a session, shaped like real-time avatar frameworks (LiveKit Agents, Pipecat,
aiortc): push audio, clear the buffer on barge-in, and async-iterate video, audio and
end-of-segment events.

    async with AsyncSession(avatar.open_session(references=[img])) as s:
        await s.push_audio(pcm, 16000)            # TTS audio, any piece size
        await s.end_segment()                     # the utterance is complete
        async for ev in s:                        # VideoFrame / AudioFrame / EndOfSegment
            ...

All calls into the underlying (not thread-safe) :class:`~lpm_rt.session.Session` run in order on
one worker thread, so the event loop never blocks on model compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass

import numpy as np

__all__ = ["AsyncSession", "VideoFrame", "AudioFrame", "EndOfSegment"]


@dataclass(frozen=True)
class VideoFrame:
    index: int
    pts: float
    image: np.ndarray          # HxWx3 uint8 RGB


@dataclass(frozen=True)
class AudioFrame:
    pts: float
    pcm: np.ndarray            # float32 mono: the speaker audio played with the video frame at pts
    sample_rate: int


@dataclass(frozen=True)
class EndOfSegment:
    frames: int                # frames emitted so far in the stream
    interrupted: bool = False


class AsyncSession:
    def __init__(self, session):
        self.session = session
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lpm-rt")
        self._events: asyncio.Queue = asyncio.Queue()
        self._closed = False

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _produce(self):
        """Worker thread: every frame the pushed audio now covers -> event list."""
        rate = self.session.avatar.spec.sample_rate
        out = []
        for f in self.session.frames():
            out.append(VideoFrame(f.index, f.pts, f.image))
            out.append(AudioFrame(f.pts, f.audio, rate))
        return out

    async def _pump(self):
        for ev in await self._call(self._produce):
            self._events.put_nowait(ev)

    async def push_audio(self, pcm, sample_rate: int, track: str = "speaker") -> None:
        """Queue audio (raises InvalidAudio for bad input; the session stays usable)."""
        await self._call(self.session.push_audio, pcm, sample_rate, track)
        await self._pump()

    async def end_segment(self) -> None:
        """The current utterance is complete: pad the tail, emit the rest, then EndOfSegment."""
        await self._call(self.session.flush)
        await self._pump()
        self._events.put_nowait(EndOfSegment(self.session._emitted))

    async def clear_buffer(self) -> float:
        """Barge-in: drop queued speaker audio; returns the playback position (s)."""
        pos = await self._call(self.session.interrupt)
        self._events.put_nowait(EndOfSegment(self.session._emitted, interrupted=True))
        return pos

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._closed and self._events.empty():
            raise StopAsyncIteration
        return await self._events.get()

    def pending_events(self) -> int:
        return self._events.qsize()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._call(self.session.close)
            self._pool.shutdown(wait=True)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
