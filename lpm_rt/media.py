"""Media I/O, one place for the project: WAV (stdlib ``wave``), PNG (zlib writer, PyAV reader),
MP4 (H.264 + AAC through PyAV) write and read-back."""

from __future__ import annotations

import struct
import wave
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import InvalidAudio

__all__ = ["read_wav", "write_wav", "write_png", "read_image", "Mp4Writer", "write_mp4",
           "read_video", "read_mp4"]


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


def write_wav(path, pcm: np.ndarray, rate: int = 16000) -> None:
    """Mono float32 in [-1, 1] (or int16) -> 16-bit PCM WAV."""
    pcm = np.asarray(pcm)
    x = pcm.astype("<i2") if pcm.dtype == np.int16 else (np.clip(pcm, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(x.tobytes())


def write_png(path, img: np.ndarray) -> None:
    """[H, W, 3] uint8 RGB -> 8-bit truecolour PNG (filter 0 rows)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)  # (h, 1 + 3w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def read_image(path) -> np.ndarray:
    """Any image file PyAV decodes (PNG, JPEG, ...) -> [H, W, 3] uint8 RGB. Raises OSError/av errors."""
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


class Mp4Writer:
    """Streams frames (HxWx3 uint8) and mono float32 audio into an H.264 + AAC MP4.
    ``gop``: keyframe interval (frames) for seekable files; ``threads``: encoder threads
    ("1" gives byte-identical files across runs)."""

    def __init__(self, path, width: int, height: int, fps: int, sample_rate: int, crf: int = 20,
                 gop: int | None = None, threads: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.c = av.open(str(self.path), "w")
        self.v = self.c.add_stream("libx264", rate=fps)
        self.v.width, self.v.height, self.v.pix_fmt = width, height, "yuv420p"
        opts = {"crf": str(crf), "preset": "veryfast"}
        if gop:
            opts["g"] = str(gop)
        if threads:
            opts["threads"] = threads
        self.v.options = opts
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


def write_mp4(path, frames: np.ndarray, fps: int = 24, crf: int = 18, audio=None,
              sample_rate: int = 16000) -> None:
    """[T, H, W, 3] uint8 -> H.264 MP4 (keyframe every second, single-thread deterministic
    encode), with a mono AAC track when ``audio`` is given."""
    frames = np.asarray(frames, dtype=np.uint8)
    with Mp4Writer(path, frames.shape[2], frames.shape[1], fps, sample_rate, crf, gop=fps, threads="1") as w:
        for img in frames:
            w.add(img)
        if audio is not None:
            w.pending = np.clip(np.asarray(audio, np.float32), -1, 1)
            w._audio(final=True)


def read_video(path, start: int = 0, count: int | None = None) -> np.ndarray:
    """Frames [start, start + count) of the first video stream: [T, H, W, 3] uint8."""
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i < start:
                continue
            if count is not None and len(out) >= count:
                break
            out.append(frame.to_ndarray(format="rgb24"))
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def read_mp4(path) -> tuple:
    """-> (frames [T, H, W, 3] uint8, audio float32 mono, audio rate, fps)."""
    frames = read_video(path)
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
    audio, rate = np.zeros(0, np.float32), 0
    with av.open(str(path)) as c:
        if c.streams.audio:
            chunks = []
            for f in c.decode(audio=0):
                rate = f.sample_rate
                chunks.append(f.to_ndarray().astype(np.float32).reshape(len(f.layout.channels), -1).mean(0))
            audio = np.concatenate(chunks) if chunks else audio
    return frames, audio, rate, fps
