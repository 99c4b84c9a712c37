"""Configuration: model shape, stream settings and runtime settings, plus named presets.

Three frozen dataclasses, validated in ``__post_init__``, with derived values computed
there so model code never re-derives (or hard-codes) a shape:

* :class:`ModelConfig`   -- the network (Wan2.1 DiT shape + LPM additions + VAE + audio).
* :class:`StreamConfig`  -- how a session streams it (resolution, chunking, history, pages).
* :class:`RuntimeConfig` -- where and how it runs (device, dtypes, page pool, op backend).

``preset(name)`` returns an :class:`LPMConfig` bundling the three.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field

__all__ = [
    "RefKind", "ModelConfig", "StreamConfig", "RuntimeConfig", "LPMConfig",
    "PRESETS", "preset",
]


class RefKind(enum.IntEnum):
    """Kinds of identity reference; the value indexes the per-kind embedding."""

    GLOBAL = 0
    BODY_VIEW = 1
    FACE_EXPRESSION = 2


@dataclass(frozen=True)
class ModelConfig:
    """Shape of one LPM network (base, online backbone and refiner share the block type)."""

    name: str
    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    refiner_layers: int              # the one-step refiner: same block type and width, fewer layers
    in_dim: int = 16                 # VAE latent channels
    out_dim: int = 16
    patch_size: tuple = (1, 2, 2)    # (t, h, w) patch of the latent
    freq_dim: int = 256              # sinusoidal timestep embedding width
    text_dim: int = 4096             # width of precomputed text embeddings (umT5 for Wan)
    text_len: int = 512
    num_tags: int = 32               # built-in prompt-tag vocabulary (demo text conditioning)
    audio_dim: int = 768             # width of audio tokens
    n_mels: int = 80
    audio_tokens_per_frame: int = 4  # audio tokens per latent frame
    audio_context: int = 1           # extra past latent frames each frame's audio attention sees
    speaker_audio_context: int | None = None   # the speaker's, when narrower (None: audio_context): the
                                     # mouth follows the last ~0.3 s, a listener's nod audio ~0.8 s back
    audio_window_pos: bool = False   # a learned embedding per audio-window slot (see AudioEncoder)
    num_ref_kinds: int = len(RefKind)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    vae_z_dim: int = 16
    vae_channels: tuple = (32, 64, 128)   # decoder widths, high-res -> low-res
    vae_temporal: int = 4            # video frames per latent frame
    vae_spatial: int = 8             # pixels per latent cell
    vae_res: int = 0                 # residual blocks per VAE resolution stage (below full resolution)

    # derived
    head_dim: int = field(init=False)
    rope_dims: tuple = field(init=False)       # complex pairs per (t, h, w) axis
    patch_dim: int = field(init=False)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"{self.name}: dim {self.dim} not divisible by heads {self.num_heads}")
        head_dim = self.dim // self.num_heads
        if head_dim % 2:
            raise ValueError(f"{self.name}: head_dim {head_dim} must be even for RoPE")
        for k in ("num_layers", "refiner_layers", "ffn_dim", "audio_tokens_per_frame"):
            if getattr(self, k) < 1:
                raise ValueError(f"{self.name}: {k} must be >= 1")
        if self.audio_context < 0:
            raise ValueError(f"{self.name}: audio_context must be >= 0")
        if self.speaker_audio_context is not None and not 0 <= self.speaker_audio_context <= self.audio_context:
            raise ValueError(f"{self.name}: speaker_audio_context {self.speaker_audio_context} not in "
                             f"[0, audio_context {self.audio_context}]")
        if self.in_dim != self.vae_z_dim or self.out_dim != self.vae_z_dim:
            raise ValueError(f"{self.name}: in/out dim must equal the VAE latent channels")
        if self.vae_res < 0:
            raise ValueError(f"{self.name}: vae_res must be >= 0")
        if 2 ** (len(self.vae_channels)) != self.vae_spatial:
            raise ValueError(f"{self.name}: {len(self.vae_channels)} VAE stages cannot give x{self.vae_spatial}")
        c = head_dim // 2
        # Wan2.1's split of the rotary pairs over (t, h, w): the time axis takes the remainder.
        rope = (c - 2 * (c // 3), c // 3, c // 3)
        object.__setattr__(self, "head_dim", head_dim)
        object.__setattr__(self, "rope_dims", rope)
        object.__setattr__(self, "patch_dim", self.in_dim * math.prod(self.patch_size))

    @property
    def audio_window_tokens(self) -> float:
        """Audio tokens a block's audio attention reads per latent frame, averaged over the
        speaker's and the listener's blocks (they alternate)."""
        spk = self.audio_context if self.speaker_audio_context is None else self.speaker_audio_context
        return (spk + self.audio_context + 2) / 2 * self.audio_tokens_per_frame

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class StreamConfig:
    """How a session streams the online model.

    ``speaker_guidance`` / ``listener_guidance``: classifier-free guidance on each audio track,
    applied where the backbone reads it (:class:`lpm_rt.model.dit.GuidedKV`): every audio
    cross-attention's output becomes a0 + g (a - a0), a0 its output with a silent chunk. A
    distilled online model has no guidance of its own, and its teacher's mouth follows speech
    fully only under guidance; g > 1 gives back what distillation lost. Costs one more
    attention over the chunk's few audio tokens per guided backbone block; silence stays
    silence."""

    height: int
    width: int
    fps: int = 24
    sample_rate: int = 24000           # 24 kHz: exactly 1000 samples per 24 fps frame
    chunk_frames: int = 1              # latent frames per streamed chunk
    backbone_steps: int = 2            # denoising steps of the causal backbone (1-4)
    history_frames: int = 4            # latent frames of noisy history kept in the ring
    reference_slots: int = 3           # max reference images per session
    sigma_min_step: float = 0.25       # noise level of the last backbone step (= history noise)
    sigma_shift: float = 1.0           # flow-matching timestep shift of the step schedule
    refiner_sigma: float = 0.2         # noise level the one-step refiner treats its input at
    page_size: int = 16                # tokens per KV page; must divide tokens per latent frame
    ref_time_index: int = -8           # RoPE time index of reference tokens (outside video range)
    rebase_period: int = 0             # latent frames between RoPE re-basings (0: max(history, chunk))
    speaker_guidance: float = 1.0      # audio guidance in the speaker cross-attention (1: off, see below)
    listener_guidance: float = 1.0     # the same in the listener cross-attention

    # derived (the model's patch/VAE strides are needed: set by LPMConfig)
    latent_h: int = field(init=False, default=0)
    latent_w: int = field(init=False, default=0)
    tokens_per_frame: int = field(init=False, default=0)
    pages_per_frame: int = field(init=False, default=0)
    frames_per_chunk: int = field(init=False, default=0)    # video frames per chunk
    samples_per_frame: int = field(init=False, default=0)
    sigmas: tuple = field(init=False, default=())           # backbone step noise levels, 1 -> last
    time_limit: int = field(init=False, default=0)          # RoPE time indices of video stay below this
    history_t: float = field(init=False, default=0.0)       # timestep (0-1000) of cached K/V

    def __post_init__(self):
        if not 1 <= self.backbone_steps <= 4:
            raise ValueError("backbone_steps must be in 1..4")
        if self.chunk_frames < 1 or self.history_frames < 0 or self.reference_slots < 0:
            raise ValueError("chunk_frames >= 1, history_frames >= 0, reference_slots >= 0")
        if self.sample_rate % self.fps:
            raise ValueError(f"sample_rate {self.sample_rate} must be a multiple of fps {self.fps}")
        if not 0.0 < self.sigma_min_step <= 1.0 or not 0.0 <= self.refiner_sigma < 1.0:
            raise ValueError("sigma_min_step in (0, 1], refiner_sigma in [0, 1)")
        if not (0.0 <= self.speaker_guidance <= 20.0 and 0.0 <= self.listener_guidance <= 20.0):
            raise ValueError("speaker_guidance and listener_guidance must be in [0, 20] (1: off)")
        s = self.backbone_steps
        lin = [1.0 - i * (1.0 - self.sigma_min_step) / max(s - 1, 1) for i in range(s)]
        if s == 1:
            lin = [1.0]
        # Wan's shifted schedule: sigma' = shift * sigma / (1 + (shift - 1) * sigma)
        sig = tuple(self.sigma_shift * x / (1 + (self.sigma_shift - 1) * x) for x in lin)
        object.__setattr__(self, "sigmas", sig)
        object.__setattr__(self, "history_t", 1000.0 * sig[-1])
        object.__setattr__(self, "samples_per_frame", self.sample_rate // self.fps)
        # Unbounded streams keep video time indices in [0, time_limit): the distance to the
        # references (fixed indices) stays inside what training covers. See StreamCache.rebase.
        period = self.rebase_period or max(self.history_frames, self.chunk_frames)
        period = -(-period // self.chunk_frames) * self.chunk_frames
        object.__setattr__(self, "time_limit", self.history_frames + self.chunk_frames + period)

    def bind(self, model: ModelConfig) -> "StreamConfig":
        """Fill the derived values that depend on the model's strides and validate them."""
        down = model.vae_spatial * model.patch_size[1]
        if self.height % down or self.width % down:
            raise ValueError(f"resolution {self.width}x{self.height} must be a multiple of {down}")
        lh, lw = self.height // model.vae_spatial, self.width // model.vae_spatial
        tpf = (lh // model.patch_size[1]) * (lw // model.patch_size[2])
        if tpf % self.page_size:
            raise ValueError(f"page_size {self.page_size} must divide the {tpf} tokens of a latent frame")
        out = dataclasses.replace(self)
        for k, v in dict(latent_h=lh, latent_w=lw, tokens_per_frame=tpf,
                         pages_per_frame=tpf // self.page_size,
                         frames_per_chunk=self.chunk_frames * model.vae_temporal).items():
            object.__setattr__(out, k, v)
        return out

    def replace(self, **kw) -> "StreamConfig":
        return dataclasses.replace(self, **kw)


class KVDtype(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    FP8K = "fp8k"      # fp8 e4m3 K pages (per-page per-head scales), V pages in the activation dtype


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a model runs."""

    device: str = "cpu"
    dtype: str = "fp32"                # activations / weights of the reference path
    kv_dtype: KVDtype = KVDtype.FP32   # page dtype (fp8 e4m3 pages carry per-page per-head scales)
    max_sessions: int = 4              # sizes the page pool (admission control beyond it)
    ops_backend: str = "ref"           # "ref" (pure torch), "triton" (JIT) or "aot" (an artifact's cubins)
    num_threads: int = 0               # torch intra-op threads on CPU; 0 = leave torch's default
    cuda_graphs: bool = False          # replay each session's per-chunk step as one CUDA graph (CUDA with
                                       # triton/aot ops; elsewhere the same static-buffer path runs eagerly)
    noise: str = "fresh"               # "fresh": new noise draws every chunk (as the trainer's rollouts);
                                       # "fixed": one draw per session, reused by every chunk (steadier video;
                                       # a model distilled on fresh draws, as the demo's, loses its lip sync)

    def __post_init__(self):
        object.__setattr__(self, "kv_dtype", KVDtype(self.kv_dtype))
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"dtype {self.dtype!r} not in fp32/bf16/fp16")
        if self.ops_backend not in ("ref", "triton", "aot"):
            raise ValueError(f"ops_backend {self.ops_backend!r} not in ref/triton/aot")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if self.noise not in ("fresh", "fixed"):
            raise ValueError(f"noise {self.noise!r} not in fresh/fixed")
        if self.cuda_graphs and self.device.startswith("cuda") and self.ops_backend == "ref":
            raise ValueError("cuda_graphs on CUDA needs the triton or aot ops backend (the reference paged "
                             "attention reads sequence lengths on the host, which a graph cannot capture)")

    def replace(self, **kw) -> "RuntimeConfig":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class LPMConfig:
    model: ModelConfig
    stream: StreamConfig
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.stream.sample_rate != 24000 or self.stream.fps != 24:
            raise ValueError("the audio front end is built for 24 fps video and 24 kHz audio")
        object.__setattr__(self, "stream", self.stream.bind(self.model))

    @property
    def name(self) -> str:
        return self.model.name

    def to_dict(self) -> dict:
        def conv(obj):
            d = {}
            for f in dataclasses.fields(obj):
                if not f.init:
                    continue
                v = getattr(obj, f.name)
                d[f.name] = v.value if isinstance(v, enum.Enum) else (list(v) if isinstance(v, tuple) else v)
            return d
        return {"model": conv(self.model), "stream": conv(self.stream), "runtime": conv(self.runtime)}

    @classmethod
    def from_dict(cls, d: dict) -> "LPMConfig":
        def tup(kw):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
        return cls(ModelConfig(**tup(d["model"])), StreamConfig(**tup(d["stream"])),
                   RuntimeConfig(**tup(d.get("runtime", {}))))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, model=None, stream=None, runtime=None) -> "LPMConfig":
        return LPMConfig(model or self.model, stream or self.stream, runtime or self.runtime)


# Stream settings of the 480P presets: 480x832 -> 60x104 latent -> 1560 tokens per latent frame;
# pages of 120 tokens (13 per frame); a 12-frame history window and 3 reference frames.
_P480 = dict(height=480, width=832, page_size=120, history_frames=12, chunk_frames=3,
             backbone_steps=2, reference_slots=3)

PRESETS: dict = {
    "tiny": LPMConfig(
        ModelConfig("tiny", dim=64, num_heads=4, num_layers=2, ffn_dim=128, refiner_layers=1,
                    text_dim=32, num_tags=16, audio_dim=32, n_mels=32, audio_tokens_per_frame=2,
                    vae_channels=(8, 8, 16)),
        StreamConfig(height=64, width=64, chunk_frames=2, backbone_steps=2, history_frames=3,
                     page_size=8, reference_slots=3)),
    "demo": LPMConfig(
        ModelConfig("demo", dim=256, num_heads=8, num_layers=6, ffn_dim=768, refiner_layers=2,
                    text_dim=256, num_tags=32, audio_dim=128, n_mels=64, audio_tokens_per_frame=4,
                    vae_channels=(16, 32, 64)),
        StreamConfig(height=128, width=128, chunk_frames=1, backbone_steps=2, history_frames=4,
                     page_size=32, reference_slots=3)),
    "edge-1.3b": LPMConfig(
        ModelConfig("edge-1.3b", dim=1536, num_heads=12, num_layers=30, ffn_dim=8960,
                    refiner_layers=4, text_dim=4096, audio_dim=768, vae_channels=(96, 192, 384)),
        StreamConfig(**_P480), RuntimeConfig(dtype="bf16", kv_dtype=KVDtype.FP8, max_sessions=2)),
    "lpm-17b": LPMConfig(
        ModelConfig("lpm-17b", dim=5120, num_heads=40, num_layers=40, ffn_dim=13824,
                    refiner_layers=4, text_dim=4096, audio_dim=1024, vae_channels=(96, 192, 384)),
        StreamConfig(**_P480), RuntimeConfig(dtype="bf16", kv_dtype=KVDtype.FP8, max_sessions=1)),
}


def preset(name: str) -> LPMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
