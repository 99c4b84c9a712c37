"""Media I/O: WAV in (stdlib ``wave``), MP4 out (H.264 + AAC through PyAV), MP4 read-back."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import InvalidAudio

__all__ = ["read_wav", "write_wav", "Mp4Writer", "read_mp4"]


def read_wav(path) -> tuple:
    """-> (mono float32 PCM in [-1, 1], sample rate). 8/16/24/32-bit PCM; channels are averaged."""
    try:
        with wave.open(str(path), "rb") as w:
            n, ch, width, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(n)
    except (OSError, wave.Error, EOFError) as e:
        raise InvalidAudio(f"cannot read WAV {path}: {e}") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / (1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2 ** 31
    else:
        raise InvalidAudio(f"{path}: unsupported sample width {width}")
    return x.reshape(-1, ch).mean(axis=1).astype(np.float32), rate


def write_wav(path, pcm: np.ndarray, rate: int) -> None:
    """Mono 16-bit PCM WAV."""
    x = (np.clip(pcm, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(x.tobytes())


class Mp4Writer:
    """Streams frames (HxWx3 uint8) and mono float32 audio into an H.264 + AAC MP4."""

    def __init__(self, path, width: int, height: int, fps: int, sample_rate: int, crf: int = 20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.c = av.open(str(self.path), "w")
        self.v = self.c.add_stream("libx264", rate=fps)
        self.v.width, self.v.height, self.v.pix_fmt = width, height, "yuv420p"
        self.v.options = {"crf": str(crf), "preset": "veryfast"}
        self.a = self.c.add_stream("aac", rate=sample_rate)
        self.a.layout = "mono"
        self.rate = sample_rate
        self.samples = 0
        self.pending = np.zeros(0, np.float32)

    def add(self, image: np.ndarray, audio: np.ndarray | None = None) -> None:
        for p in self.v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            self.c.mux(p)
        if audio is not None and len(audio):
            self.pending = np.concatenate([self.pending, audio.astype(np.float32)])
            self._audio(final=False)

    def _audio(self, final: bool):
        n = self.a.codec_context.frame_size or 1024
        while len(self.pending) >= n or (final and len(self.pending)):
            chunk, self.pending = self.pending[:n], self.pending[n:]
            f = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            f.sample_rate, f.pts, f.time_base = self.rate, self.samples, Fraction(1, self.rate)
            self.samples += len(chunk)
            for p in self.a.encode(f):
                self.c.mux(p)

    def close(self) -> None:
        self._audio(final=True)
        for s in (self.v, self.a):
            for p in s.encode(None):
                self.c.mux(p)
        self.c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_mp4(path) -> tuple:
    """-> (frames [T, H, W, 3] uint8, audio float32 mono, audio rate, fps)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    audio, rate = np.zeros(0, np.float32), 0
    with av.open(str(path)) as c:
        if c.streams.audio:
            chunks = []
            for f in c.decode(audio=0):
                rate = f.sample_rate
                chunks.append(f.to_ndarray().astype(np.float32).reshape(len(f.layout.channels), -1).mean(0))
            audio = np.concatenate(chunks) if chunks else audio
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8), audio, rate, fps
