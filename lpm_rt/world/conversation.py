"""Two-party conversations with per-frame behaviour labels.

``Conversation.generate(seed, seconds, mode=...)`` lays out turns for the rendered character
("self") and its partner — phrases, intra-turn pauses, overlaps, long silences and "mm-hm"
backchannels — synthesizes both audio tracks, then derives the behaviour of the rendered
character frame by frame with rules:

1. mouth opening / shape follow the character's own articulation track (syllable envelope x
   vowel opening, vowel class -> shape); closed otherwise;
2. while the partner talks and self does not: nods timed to the partner's stressed
   syllables and phrase ends (200-350 ms later), gaze at the partner, more blinks;
3. while speaking: small beat gestures on own stresses, gaze aversion now and then;
4. always: slow head sway, Poisson blinks, slow lighting drift;
5. expression from the prompt tag (``smile``, ``sad``, ``surprised``, ``calm``...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import audio as A
from .character import MOUTH_SHAPES, TAG_TO_EXPRESSION, Character
from .render import Scene, render_video

__all__ = ["Conversation", "FPS", "SR", "MODES", "TAGS", "frame_bounds"]

FPS = 24
SR = A.SR
MODES = ("conversation", "speaking", "listening")
TAGS = ("calm", "smile", "sad", "surprised")
_BLINK = np.array([0.45, 0.05, 0.0, 0.35, 0.8], np.float32)    # eye opening over a blink
_NOD_FRAMES = 12


def frame_bounds(n_frames: int, sr: int = SR, fps: int = FPS) -> np.ndarray:
    """Sample index where each frame's audio slice starts, plus the end: ``[n_frames + 1]``."""
    return np.round(np.arange(n_frames + 1) * (sr / fps)).astype(np.int64)


def _per_frame(x: np.ndarray, bounds: np.ndarray, how: str = "mean") -> np.ndarray:
    x = np.pad(x, (0, max(0, int(bounds[-1]) - len(x))))
    s = np.add.reduceat(x.astype(np.float64) if how == "mean" else x.astype(np.float64) ** 2,
                        bounds[:-1])
    v = s / np.diff(bounds)
    return (v if how == "mean" else np.sqrt(v)).astype(np.float32)


@dataclass
class Conversation:
    """A generated conversation: both audio tracks and per-frame labels of the rendered character."""

    seed: int
    seconds: float
    mode: str
    prompt: str
    character: Character
    scene: Scene
    self_audio: np.ndarray           # [n] float32 at 16 kHz: the rendered character's speech
    partner_audio: np.ndarray        # [n] float32: the other party
    labels: dict                     # key -> [T] array (str arrays for categorical labels)
    segments: list = field(default_factory=list)   # (party, start_s, end_s, kind)
    fps: int = FPS
    sample_rate: int = SR

    @property
    def num_frames(self) -> int:
        return len(self.labels["mouth_open"])

    def render(self, size=128) -> np.ndarray:
        """``[T, H, W, 3]`` uint8 video of the character behaving as labelled."""
        return render_video(self.character, self.labels, self.scene, size)

    def labels_json(self) -> dict:
        out = {}
        for k, v in self.labels.items():
            v = np.asarray(v)
            out[k] = [round(float(x), 4) for x in v] if v.dtype.kind == "f" else v.tolist()
        return out

    @staticmethod
    def generate(seed: int, seconds: float, mode: str = "conversation", prompt: str | None = None,
                 character: Character | None = None, scene: Scene | None = None,
                 voice_backend: str = "synth", backchannels: bool = True,
                 base_yaw: float | None = None) -> "Conversation":
        """Generate ``seconds`` of a two-party exchange; everything is a function of the arguments.

        mode: ``conversation`` (turn-taking), ``speaking`` (only self talks) or ``listening``
        (only the partner talks; self backchannels only if ``backchannels``).
        prompt: a tag (see ``TAGS``/``character.TAG_TO_EXPRESSION``); random when None.
        voice_backend: ``synth`` (pure numpy), ``espeak`` (espeak-ng, must be installed) or
        ``auto`` (espeak-ng when installed, else synth).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if voice_backend not in ("synth", "espeak", "auto"):
            raise ValueError("voice_backend must be synth, espeak or auto")
        use_espeak = voice_backend == "espeak" or (voice_backend == "auto" and A.espeak_available())
        rng = np.random.default_rng([int(seed), 0xC0])
        character = character or Character.random(int(rng.integers(2 ** 31)))
        scene = scene or Scene.random(int(rng.integers(2 ** 31)))
        prompt = prompt if prompt is not None else TAGS[rng.integers(len(TAGS))]
        voices = (A.Voice.random(rng), A.Voice.random(rng))
        n = int(round(seconds * SR))
        audio = np.zeros((2, n), np.float32)
        artic = np.zeros(n, np.float32)
        shape = np.zeros(n, np.int8)
        stresses = ([], [])                        # per party, sample indices of prosodic beats
        segments = []

        def place(who, ph: A.Phrase, t0: int, kind: str):
            t0 = max(int(t0), 0)
            m = min(len(ph.audio), n - t0)
            if m <= 0:
                return
            audio[who, t0:t0 + m] += ph.audio[:m]
            if who == 0:
                artic[t0:t0 + m] = np.maximum(artic[t0:t0 + m], ph.artic[:m])
                sel = ph.artic[:m] > 0.05
                shape[t0:t0 + m][sel] = ph.shape[:m][sel]
            stresses[who].extend(t0 + s for s in ph.stresses if s < m)
            stresses[who].append(t0 + m - 1)       # a phrase end is a beat too
            segments.append((who, t0 / SR, (t0 + m) / SR, kind))

        phrase = A.espeak_phrase if use_espeak else A.synth_phrase
        t = int(rng.uniform(0.2, 0.8) * SR)
        who = {"speaking": 0, "listening": 1}.get(mode, int(rng.integers(2)))
        while t < n:
            for _ in range(int(rng.integers(1, 4))):
                ph = phrase(rng, voices[who], int(rng.integers(3, 10)))
                place(who, ph, t, "speech")
                other = 1 - who
                if backchannels and rng.uniform() < 0.35 and (mode == "conversation" or
                                                              (mode == "listening" and other == 0)):
                    place(other, A.synth_backchannel(rng, voices[other]),
                          t + len(ph.audio) + int(rng.uniform(-0.15, 0.1) * SR), "backchannel")
                t += len(ph.audio) + int(rng.uniform(0.12, 0.45) * SR)
                if t >= n:
                    break
            r = rng.uniform()
            gap = -0.35 if r < 0.15 else (rng.uniform(1.0, 2.2) if r < 0.4 else rng.uniform(0.2, 0.8))
            t += int(gap * SR)
            if mode == "conversation" and rng.uniform() < 0.8:
                who = 1 - who
        audio = np.clip(audio, -1.0, 1.0)
        labels = _behaviour(rng, n, audio, artic, shape, stresses, segments, prompt, base_yaw)
        return Conversation(int(seed), float(seconds), mode, prompt, character, scene,
                            audio[0], audio[1], labels, sorted(segments, key=lambda s: s[1]))


def _smooth_noise(rng, T, amp, periods=(3.0, 5.3, 9.7)):
    t = np.arange(T) / FPS
    out = np.zeros(T, np.float32)
    for p in periods:
        out += np.sin(2 * np.pi * t / (p * rng.uniform(0.8, 1.25)) + rng.uniform(0, 2 * np.pi))
    return (amp / len(periods) ** 0.5 * out).astype(np.float32)


def _behaviour(rng, n, audio, artic, shape, stresses, segments, prompt, base_yaw) -> dict:
    T = int(math.ceil(n / SR * FPS))
    b = frame_bounds(T)
    self_talk = np.zeros(T, bool)
    partner_talk = np.zeros(T, bool)
    backch = np.zeros(T, bool)
    for who, s0, s1, kind in segments:
        f0, f1 = int(s0 * FPS), min(int(math.ceil(s1 * FPS)), T)
        if kind == "speech":
            (self_talk if who == 0 else partner_talk)[f0:f1] = True
        elif who == 0:
            backch[f0:f1] = True
    listening = partner_talk & ~self_talk

    # 1. mouth from own articulation; shape at the most open sample of each frame
    mouth = np.clip(_per_frame(artic, b), 0.0, 1.0)
    mouth = np.where(mouth < 0.03, 0.0, mouth).astype(np.float32)
    shp = np.zeros(T, np.int64)
    art = np.pad(artic, (0, max(0, int(b[-1]) - n)))
    shp_s = np.pad(shape, (0, max(0, int(b[-1]) - n)))
    for i in np.nonzero(mouth > 0.1)[0]:
        j = b[i] + int(np.argmax(art[b[i]:b[i + 1]]))
        shp[i] = shp_s[j]
    mouth_shape = np.array(MOUTH_SHAPES)[shp]

    # 2-3. head: sway always; nods on the partner's beats while listening; beats while speaking
    pitch = _smooth_noise(rng, T, 1.5)
    yaw = _smooth_noise(rng, T, 2.5) + (rng.uniform(-12, 12) if base_yaw is None else base_yaw)
    roll = _smooth_noise(rng, T, 1.2)
    nod = np.zeros(T, bool)
    last = -10 ** 9
    prof = np.sin(np.pi * np.arange(_NOD_FRAMES) / _NOD_FRAMES) ** 2
    for s in sorted(stresses[1]):
        f = int((s / SR + rng.uniform(0.2, 0.35)) * FPS)
        if f >= T or not listening[min(int(s / SR * FPS), T - 1)] or f - last < 0.9 * FPS:
            continue
        if rng.uniform() < 0.75:
            m = min(_NOD_FRAMES, T - f)
            pitch[f:f + m] += rng.uniform(5.0, 9.0) * prof[:m]
            nod[f:f + m] = True
            last = f
    for s in stresses[0]:
        f = int(s / SR * FPS)
        if f < T and self_talk[f] and rng.uniform() < 0.6:
            m = min(8, T - f)
            pitch[f:f + m] += rng.uniform(1.5, 3.0) * np.sin(np.pi * np.arange(m) / 8)
            yaw[f:f + m] += rng.uniform(-2.0, 2.0) * np.sin(np.pi * np.arange(m) / 8)

    # blinks: Poisson, more frequent while listening
    eye = np.ones(T, np.float32)
    i = 0
    while i < T:
        rate = 0.6 if listening[i] else 0.3
        i += int(rng.exponential(1.0 / rate) * FPS) + 2
        if i < T:
            m = min(len(_BLINK), T - i)
            eye[i:i + m] = np.minimum(eye[i:i + m], _BLINK[:m])
    # gaze: at the partner while listening; while speaking, look away now and then
    gx = np.zeros(T, np.float32)
    gy = np.zeros(T, np.float32)
    i = 0
    while i < T:
        hold = int(rng.uniform(0.5, 2.0) * FPS)
        if self_talk[i] and rng.uniform() < 0.4:
            gx[i:i + hold] = rng.choice([-1, 1]) * rng.uniform(0.4, 0.8)
            gy[i:i + hold] = rng.uniform(-0.5, 0.2)
        i += hold
    gx[listening] = 0.0
    gy[listening] = 0.0
    at_partner = (np.abs(gx) < 0.2) & (np.abs(gy) < 0.2)

    # 5. expression from the prompt tag; fades in over the first 0.4 s
    expr = TAG_TO_EXPRESSION.get(prompt.strip().lower(), "neutral")
    intensity = np.clip(np.arange(T) / (0.4 * FPS), 0.0, 1.0).astype(np.float32)
    if expr == "neutral":
        intensity[:] = 1.0
    tt = np.arange(T) / FPS
    light = 1.0 + 0.06 * np.sin(2 * np.pi * tt / rng.uniform(8, 20) + rng.uniform(0, 2 * np.pi))
    who_speaks = np.where(self_talk & partner_talk, "both",
                          np.where(self_talk, "self", np.where(partner_talk, "partner", "none")))
    return {
        "time": tt.astype(np.float32), "who_speaks": who_speaks,
        "self_speaking": self_talk, "partner_speaking": partner_talk, "backchannel": backch,
        "mouth_open": mouth, "mouth_shape": mouth_shape,
        "eye_open": eye, "blink": eye < 0.5,
        "pitch": pitch.astype(np.float32), "yaw": yaw.astype(np.float32),
        "roll": roll.astype(np.float32), "nod": nod,
        "gaze_x": gx, "gaze_y": gy, "gaze_at_partner": at_partner,
        "expression": np.array([expr] * T), "intensity": intensity,
        "light": light.astype(np.float32),
        "self_env": _per_frame(audio[0], b, "rms"), "partner_env": _per_frame(audio[1], b, "rms"),
    }
