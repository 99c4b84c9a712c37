"""Frozen target specs and per-target kernel configuration tables.

A :class:`Target` names what an artifact is built for: the GPU architecture the cubins are
compiled for (``sm``; None for the CPU target), the weight format of the quantized linears, the
activation and KV-page dtypes, and the multiprocessor count the kernel table assumes.

Kernel configurations (tile sizes, warps, pipeline stages) are a frozen table per target
(:data:`KERNEL_TABLES`). They are heuristics chosen from the tile shapes of the published
FlashAttention-2/3 and Triton fp8 GEMM tutorials and checked to fit shared memory with
``python -m lpm_rt.benchmark.sass``; **no device tuning was done** (``TUNING`` records this, and
the manifest copies it). Nothing autotunes on the device: the runtime launches exactly these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["WeightFormat", "Target", "TARGETS", "target", "KernelConfig", "KERNEL_TABLES", "TUNING"]


class WeightFormat(str, enum.Enum):
    """How the linear weights of the DiT blocks are stored in ``weights/*.safetensors``."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8_CHANNEL = "fp8_e4m3_channel"    # e4m3, one fp32 scale per output channel
    FP8_BLOCK = "fp8_e4m3_block128"     # e4m3, one fp32 scale per 1 x 128 block of a row
    INT8_CHANNEL = "int8_channel"       # weight-only int8, symmetric, one scale per output channel


@dataclass(frozen=True)
class Target:
    name: str
    sm: int | None                 # compute capability x 10 (90 = sm_90a, 87 = sm_87); None: CPU
    weights: WeightFormat          # default format of the block linears
    allowed_weights: tuple         # formats a user may pick with --weights
    act_dtype: str                 # activations and non-quantized weights
    kv_dtype: str                  # KV pages
    num_sms: int                   # multiprocessors (sizes split-KV decisions)
    onnx: bool = False             # export the per-chunk graphs for TensorRT
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "weights", WeightFormat(self.weights))
        allowed = tuple(WeightFormat(w) for w in self.allowed_weights)
        object.__setattr__(self, "allowed_weights", allowed)
        if self.weights not in allowed:
            raise ValueError(f"{self.name}: default weights {self.weights} not allowed")
        if self.sm is not None and self.sm < 89 and any(w.value.startswith("fp8") for w in allowed):
            raise ValueError(f"{self.name}: sm_{self.sm} has no FP8 tensor cores")
        if self.act_dtype not in ("fp32", "bf16", "fp16") or self.kv_dtype not in ("fp32", "bf16", "fp16", "fp8"):
            raise ValueError(f"{self.name}: bad act/kv dtype {self.act_dtype}/{self.kv_dtype}")

    @property
    def arch(self) -> str:
        """'sm_90a' (Hopper-specific features: wgmma, TMA), 'sm_87', or 'cpu'."""
        if self.sm is None:
            return "cpu"
        return f"sm_{self.sm}{'a' if self.sm >= 90 else ''}"

    def with_weights(self, fmt) -> "Target":
        fmt = WeightFormat(fmt)
        if fmt not in self.allowed_weights:
            raise ValueError(f"target {self.name} does not support weights {fmt.value}; "
                             f"choose from {', '.join(w.value for w in self.allowed_weights)}")
        return Target(self.name, self.sm, fmt, self.allowed_weights, self.act_dtype, self.kv_dtype,
                      self.num_sms, self.onnx, self.description)


TARGETS: dict = {
    "h100": Target("h100", 90, WeightFormat.FP8_CHANNEL, (WeightFormat.FP8_CHANNEL, WeightFormat.FP8_BLOCK),
                   act_dtype="bf16", kv_dtype="fp8", num_sms=132,
                   description="NVIDIA H100 (sm_90a): FP8 e4m3 linears and KV pages, bf16 activations"),
    "orin": Target("orin", 87, WeightFormat.INT8_CHANNEL, (WeightFormat.INT8_CHANNEL, WeightFormat.FP16),
                   act_dtype="fp16", kv_dtype="fp16", num_sms=16, onnx=True,
                   description="Jetson AGX Orin (sm_87, no FP8): INT8 weight-only or FP16, fp16 KV; "
                               "ONNX graphs for TensorRT"),
    "cpu": Target("cpu", None, WeightFormat.FP32, (WeightFormat.FP32, WeightFormat.BF16),
                  act_dtype="fp32", kv_dtype="fp32", num_sms=0,
                  description="x86/ARM CPU: the pure-torch reference path"),
}


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None


@dataclass(frozen=True)
class KernelConfig:
    """Launch configuration of one kernel family on one target (all constexpr or launch-time)."""

    num_warps: int
    num_stages: int
    tiles: dict = field(default_factory=dict)     # BLOCK_* constexprs (clamped to the problem later)


# Heuristic tables (no device tuning). Keys: kernel family names used by compile/kernels.py.
KERNEL_TABLES: dict = {
    "h100": {
        # FA3-like: two consumer warpgroups over 128 query rows; fp8 K/V tiles are half the bytes
        "paged_attention": KernelConfig(8, 3, dict(BLOCK_M=128, BLOCK_N=128)),
        "paged_attention_small": KernelConfig(4, 3, dict(BLOCK_M=64, BLOCK_N=64)),
        "paged_attention_combine": KernelConfig(4, 1, dict(BLOCK_S=32)),
        "fp8_linear": KernelConfig(8, 3, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128)),
        "norm_modulate": KernelConfig(8, 1, {}),
        "cache_write": KernelConfig(8, 1, {}),
        # short key streams (text, a frame's audio window): the head loop is the work
        "cross_attention": KernelConfig(4, 1, dict(BLOCK_M=64, BLOCK_N=64)),
    },
    "orin": {
        # sm_87: 164 KB shared memory per SM, mma.sync; fp16 K/V
        "paged_attention": KernelConfig(8, 3, dict(BLOCK_M=128, BLOCK_N=64)),
        "paged_attention_small": KernelConfig(4, 2, dict(BLOCK_M=64, BLOCK_N=64)),
        "paged_attention_combine": KernelConfig(4, 1, dict(BLOCK_S=32)),
        "norm_modulate": KernelConfig(4, 1, {}),
        "cache_write": KernelConfig(4, 1, {}),
        "cross_attention": KernelConfig(4, 1, dict(BLOCK_M=64, BLOCK_N=64)),
    },
}

TUNING = {"kind": "heuristic", "device": None, "date": None,
          "note": "frozen heuristic tables; no device tuning was done"}
