"""Speech-like audio for the world: a pure-numpy formant synthesizer, and espeak-ng when present
(the ``espeak-ng`` program on PATH, else the library the ``espeakng-loader`` wheel bundles).

The synthesizer builds each phrase from syllables (optional consonant onset + vowel). Voiced
sound is a glottal pulse train written as its harmonic series (amplitude ~ 1/k, i.e. the
-6 dB/octave tilt of a glottal pulse) whose harmonics are weighted by a formant envelope
(second-order resonances at F1..F3) evaluated at each harmonic's instantaneous frequency:
the same spectrum as filtering the pulse train through the resonators, without a per-sample
IIR loop. Fricatives are band-passed noise, plosives a silence + burst.

Alongside the audio every phrase returns an *articulation* track (per sample, 0..1: how far
the mouth is open) and the vowel class per sample, from which the per-frame labels follow.
"""

from __future__ import annotations

import ctypes
import functools
import io
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np

__all__ = ["SR", "Voice", "Phrase", "synth_phrase", "synth_backchannel", "espeak_available",
           "espeak_phrase", "VOWELS"]

SR = 16000

# vowel: (F1, F2, F3) Hz, mouth opening 0..1, mouth shape
VOWELS = {
    "a": ((750.0, 1250.0, 2550.0), 1.0, "open"),
    "e": ((500.0, 1850.0, 2600.0), 0.6, "wide"),
    "i": ((310.0, 2250.0, 3000.0), 0.4, "wide"),
    "o": ((500.0, 880.0, 2450.0), 0.75, "round"),
    "u": ((330.0, 800.0, 2300.0), 0.5, "round"),
    "m": ((260.0, 1050.0, 2300.0), 0.06, "rest"),     # nasal hum: lips closed
}
_BW = np.array([90.0, 110.0, 170.0], np.float32)     # formant bandwidths
_SYLL_VOWELS = "aaeeiioou"


@dataclass(frozen=True)
class Voice:
    """One speaker's voice: pitch, vocal-tract scale, tempo, loudness."""

    f0: float           # mean fundamental, Hz
    tract: float        # formant scale (shorter tract -> higher formants)
    rate: float         # syllables per second
    gain: float
    breath: float       # aspiration noise level

    @staticmethod
    def random(rng: np.random.Generator) -> "Voice":
        high = rng.uniform() < 0.5
        return Voice(f0=float(rng.uniform(170, 240) if high else rng.uniform(95, 140)),
                     tract=float(rng.uniform(1.05, 1.18) if high else rng.uniform(0.92, 1.02)),
                     rate=float(rng.uniform(3.8, 5.5)), gain=float(rng.uniform(0.25, 0.4)),
                     breath=float(rng.uniform(0.01, 0.04)))


@dataclass
class Phrase:
    """A synthesized phrase: audio, articulation and per-sample vowel index, plus syllable events."""

    audio: np.ndarray        # [n] float32
    artic: np.ndarray        # [n] float32, 0..1 mouth opening driven by this audio
    shape: np.ndarray        # [n] int8 index into character.MOUTH_SHAPES
    stresses: list           # sample offsets of stressed-syllable peaks (prosodic beats)


_SHAPE_ID = {"rest": 0, "open": 1, "wide": 2, "round": 3}


def _bandnoise(rng, n, lo, hi):
    x = rng.standard_normal(n).astype(np.float32)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(n, 1.0 / SR)
    spec[(f < lo) | (f > hi)] = 0.0
    y = np.fft.irfft(spec, n).astype(np.float32)
    return y / (np.sqrt(np.mean(y * y)) + 1e-6)


def _voiced(rng, f0, formants, amp, voice: Voice):
    """Harmonic synthesis. f0, amp: [n]; formants: [3, n] Hz. Returns [n] float32."""
    n = len(f0)
    nh = int(3800.0 / f0.min())
    phase = 2 * np.pi * np.cumsum(f0) / SR                               # (n,)
    k = np.arange(1, nh + 1, dtype=np.float32)[:, None]                  # (nh, 1)
    fk = k * f0[None, :]                                                 # (nh, n) harmonic Hz
    env = np.zeros_like(fk)
    for j in range(3):
        F = formants[j][None, :]                                         # (1, n)
        B = _BW[j] * voice.tract
        # |H(f)| of a 2nd-order resonance with unit gain at DC
        env += 1.0 / np.sqrt((1 - (fk / F) ** 2) ** 2 + (fk * B / F ** 2) ** 2)
    env *= (fk < SR / 2 - 200) / k                                       # glottal tilt, no alias
    y = np.sum(env * np.sin(k * phase[None, :] + rng.uniform(0, 2 * np.pi, (nh, 1))), axis=0)
    y = y / (np.sqrt(np.mean(y * y)) + 1e-6)
    return (y * amp).astype(np.float32)


def _smooth(x, n):
    if n < 2:
        return x
    ker = np.hanning(n + 2)[1:-1]
    return np.convolve(x, ker / ker.sum(), mode="same").astype(np.float32)


def synth_phrase(rng: np.random.Generator, voice: Voice, n_syll: int) -> Phrase:
    """A phrase of ``n_syll`` syllables with declination and 1-3 pitch accents."""
    durs, vowels, onsets = [], [], []
    for _ in range(n_syll):
        onsets.append(rng.choice(["", "f", "p", "m", "s"], p=[0.3, 0.2, 0.25, 0.1, 0.15]))
        vowels.append(_SYLL_VOWELS[rng.integers(len(_SYLL_VOWELS))])
        durs.append(rng.uniform(0.6, 1.5) / voice.rate)
    n_acc = min(n_syll, int(rng.integers(1, 4)))
    accent = set(rng.choice(n_syll, n_acc, replace=False).tolist())
    total = int(sum(durs) * SR) + SR // 10
    f0 = np.full(total, voice.f0, np.float32)
    amp = np.zeros(total, np.float32)
    artic = np.zeros(total, np.float32)
    shape = np.zeros(total, np.int8)
    form = np.zeros((3, total), np.float32)
    noise = np.zeros(total, np.float32)
    stresses = []
    t = 0
    for i, (d, v, c) in enumerate(zip(durs, vowels, onsets)):
        n = int(d * SR)
        nc = {"": 0, "f": int(0.07 * SR), "s": int(0.09 * SR), "p": int(0.05 * SR), "m": int(0.06 * SR)}[c]
        nc = min(nc, n // 2)
        (F, open_, shp) = VOWELS[v]
        stressed = i in accent
        a0 = 1.0 if stressed else rng.uniform(0.55, 0.8)
        if c in ("f", "s"):
            lo, hi = (1500, 6000) if c == "f" else (3500, 7500)
            noise[t:t + nc] += 0.35 * _bandnoise(rng, nc, lo, hi) * np.hanning(nc)
        elif c == "p" and nc > 8:
            b = nc // 5
            noise[t + nc - b:t + nc] += 0.6 * _bandnoise(rng, b, 500, 5000) * np.hanning(b)
        elif c == "m":
            Fm = VOWELS["m"][0]
            form[:, t:t + nc] = np.array(Fm, np.float32)[:, None] * voice.tract
            amp[t:t + nc] = 0.35 * a0
            artic[t:t + nc] = VOWELS["m"][1]
        vs, ve = t + nc, t + n
        nv = ve - vs
        form[:, vs:ve] = np.array(F, np.float32)[:, None] * voice.tract
        # vowel amplitude: fast attack, slower release (a syllable's energy arc)
        arc = np.sin(np.pi * np.linspace(0, 1, nv)) ** 0.6
        amp[vs:ve] = a0 * arc
        artic[vs:ve] = open_ * a0 * arc
        shape[vs:ve] = _SHAPE_ID[shp]
        if stressed:
            f0[vs:ve] += voice.f0 * 0.25 * np.sin(np.pi * np.linspace(0, 1, nv))
            stresses.append(vs + nv // 2)
        t += n
    # declination and a final fall, jitter-free but with a slow wobble
    tt = np.arange(total) / total
    f0 *= (1.08 - 0.18 * tt) * (1 + 0.02 * np.sin(2 * np.pi * 3.1 * tt * total / SR))
    f0 = _smooth(f0, int(0.03 * SR))
    f0 = np.maximum(f0, 60.0)
    for j in range(3):
        idx = form[j] == 0
        form[j][idx] = np.array(VOWELS["a"][0][j]) * voice.tract
        form[j] = _smooth(form[j], int(0.025 * SR))
    amp = _smooth(amp, int(0.012 * SR))
    y = _voiced(rng, f0, form, amp, voice)
    y += noise + voice.breath * rng.standard_normal(total).astype(np.float32) * (amp > 0.05)
    return Phrase(voice.gain * y / 3.0, _smooth(artic, int(0.02 * SR)), shape, stresses)


def synth_backchannel(rng: np.random.Generator, voice: Voice) -> Phrase:
    """'mm-hm': two nasal hums with a rise then a fall, lips (almost) closed."""
    d1, gap, d2 = rng.uniform(0.14, 0.2), rng.uniform(0.05, 0.1), rng.uniform(0.18, 0.26)
    n1, ng, n2 = int(d1 * SR), int(gap * SR), int(d2 * SR)
    total = n1 + ng + n2
    f0 = np.full(total, voice.f0, np.float32)
    f0[:n1] *= np.linspace(0.95, 1.1, n1)
    f0[n1 + ng:] *= np.linspace(1.2, 0.9, n2)
    amp = np.zeros(total, np.float32)
    amp[:n1] = np.sin(np.pi * np.linspace(0, 1, n1)) ** 0.5
    amp[n1 + ng:] = np.sin(np.pi * np.linspace(0, 1, n2)) ** 0.5
    form = np.repeat(np.array(VOWELS["m"][0], np.float32)[:, None] * voice.tract, total, axis=1)
    y = _voiced(rng, f0, form, 0.5 * amp, voice)
    y[n1 + ng:n1 + ng + n2 // 4] += 0.15 * _bandnoise(rng, n2 // 4, 800, 4000)   # the 'h'
    artic = VOWELS["m"][1] * amp
    return Phrase(voice.gain * y / 3.0, artic.astype(np.float32), np.zeros(total, np.int8), [])


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None or _espeak_lib() is not None


class _EspeakLib:
    """libespeak-ng through ctypes (the C API of ``speak_lib.h``), synchronous, retrieving the
    samples through the synth callback: the same synthesis the ``espeak-ng`` program runs. The
    library keeps state between utterances, so a repeated text may start a few samples earlier
    or later (the program, a fresh process per phrase, is bit-exact)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    _SYNCHRONOUS, _RATE, _PITCH, _POS_CHARACTER = 2, 1, 3, 1

    def __init__(self, lib_path: str, data_path: str):
        self.lib = ctypes.CDLL(lib_path)
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.rate = self.lib.espeak_Initialize(self._SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.rate <= 0:
            raise OSError(f"espeak_Initialize failed ({self.rate}) with data at {data_path}")
        self._chunks: list = []
        self._cb = self._CALLBACK(self._collect)          # kept alive as long as the library
        self.lib.espeak_SetSynthCallback(self._cb)
        if self.lib.espeak_SetVoiceByName(b"en") != 0:
            raise OSError("espeak-ng: no 'en' voice")

    def _collect(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, rate: int, pitch: int) -> tuple:
        """-> (int16 samples, sample rate)."""
        self.lib.espeak_SetParameter(self._RATE, int(rate), 0)
        self.lib.espeak_SetParameter(self._PITCH, int(pitch), 0)
        self._chunks = []
        b = text.encode() + b"\0"
        err = self.lib.espeak_Synth(b, len(b), 0, self._POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err})")
        return (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)), self.rate


@functools.lru_cache(maxsize=1)
def _espeak_lib() -> _EspeakLib | None:
    try:
        import espeakng_loader
        return _EspeakLib(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
    except (ImportError, OSError, RuntimeError):
        return None


def _espeak(text: str, rate: int, pitch: int) -> tuple:
    """espeak-ng speech of ``text`` -> (float32 in [-1, 1], sample rate): the program when it is
    on PATH, else the bundled library."""
    if shutil.which("espeak-ng") is not None:
        out = subprocess.run(["espeak-ng", "--stdout", "-s", str(rate), "-p", str(pitch), text],
                             capture_output=True, check=True, timeout=30).stdout
        with wave.open(io.BytesIO(out)) as wf:
            sr = wf.getframerate()
            x = np.frombuffer(wf.readframes(wf.getnframes()), np.int16)
    else:
        lib = _espeak_lib()
        if lib is None:
            raise RuntimeError("espeak-ng is not available: install it (apt install espeak-ng) "
                               "or the espeakng-loader wheel")
        x, sr = lib.synth(text, rate, pitch)
    return x.astype(np.float32) / 32768.0, sr


_SYLLABLES = ["ba", "lo", "mi", "ta", "ne", "so", "ku", "ra", "de", "fi", "po", "wa", "ha", "ve"]


def espeak_phrase(rng: np.random.Generator, voice: Voice, n_syll: int) -> Phrase:
    """A phrase of pseudo-words spoken by espeak-ng, resampled to 16 kHz.

    Articulation comes from the audio itself: the RMS envelope, scaled per frame by a
    spectral guess at the vowel (F2-band energy -> wide, low-F2 energy -> round).
    """
    words, left = [], n_syll
    while left > 0:
        k = min(left, int(rng.integers(1, 4)))
        words.append("".join(_SYLLABLES[rng.integers(len(_SYLLABLES))] for _ in range(k)))
        left -= k
    pitch = int(np.clip((voice.f0 - 80) / 2.0, 0, 99))
    x, sr = _espeak(" ".join(words), int(voice.rate * 40), pitch)
    n = int(len(x) * SR / sr)
    y = np.interp(np.arange(n) * sr / SR, np.arange(len(x)), x).astype(np.float32)
    y *= voice.gain / (np.sqrt(np.mean(y * y)) + 1e-6) / 3.0
    hop = SR // 100
    frames = len(y) // hop
    seg = y[:frames * hop].reshape(frames, hop)                  # (frames, hop) 10 ms blocks
    rms = np.sqrt(np.mean(seg * seg, axis=1))
    rms = rms / (np.percentile(rms, 95) + 1e-6)
    spec = np.abs(np.fft.rfft(seg, 2 * hop, axis=1)) ** 2      # (frames, hop + 1)
    f = np.fft.rfftfreq(2 * hop, 1.0 / SR)
    low = spec[:, (f > 250) & (f < 900)].sum(1)
    f2 = spec[:, (f > 1600) & (f < 3000)].sum(1)
    mid = spec[:, (f > 700) & (f < 1100)].sum(1)
    shp = np.where(rms < 0.15, 0, np.where(f2 > 0.5 * low, 2, np.where(mid > 0.8 * low, 1, 3)))
    open_k = np.array([0.1, 1.0, 0.6, 0.7])[shp]
    art = np.repeat(np.clip(rms, 0, 1) * open_k, hop)
    art = np.pad(art, (0, len(y) - len(art)))
    shape = np.pad(np.repeat(shp.astype(np.int8), hop), (0, len(y) - frames * hop))
    peaks = [int(i * hop) for i in np.argsort(rms)[-2:]]
    return Phrase(y, _smooth(art.astype(np.float32), int(0.02 * SR)), shape, sorted(peaks))
