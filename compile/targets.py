"""Frozen target specs and per-target kernel configuration tables.

A :class:`Target` names what an artifact is built for: the GPU architecture the cubins are
compiled for (``sm``; None for the CPU target), the weight format of the quantized linears, the
activation and KV-page dtypes, and the multiprocessor count the kernel table assumes.

Kernel configurations (tile sizes, warps, pipeline stages) are a frozen table per target
(:data:`KERNEL_TABLES`), checked to fit shared memory without spills by
``python -m lpm_rt.benchmark.sass``. ``TUNING[target]`` says where each table comes from (the
manifest copies it): h100's paged attention and FP8 GEMM entries are the winners of
``scripts/tune_kernels.py`` on an H200 (the sweep in ``bench/results/gpu-20261204-2/tune.json``,
every variant checked against the fp32 reference before it was timed); the rest, and all of orin,
are heuristics from the tile shapes of the published FlashAttention-2/3 and Triton fp8 GEMM
tutorials. Nothing autotunes on the device: the runtime launches exactly these.
"""

from __future__ import annotations

import dataclasses
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
    allowed_kv: tuple = ()         # page dtypes a user may pick with --kv-dtype (default: kv_dtype only)

    def __post_init__(self):
        object.__setattr__(self, "weights", WeightFormat(self.weights))
        allowed = tuple(WeightFormat(w) for w in self.allowed_weights)
        object.__setattr__(self, "allowed_weights", allowed)
        if self.weights not in allowed:
            raise ValueError(f"{self.name}: default weights {self.weights} not allowed")
        if self.sm is not None and self.sm < 89 and any(w.value.startswith("fp8") for w in allowed):
            raise ValueError(f"{self.name}: sm_{self.sm} has no FP8 tensor cores")
        if self.act_dtype not in ("fp32", "bf16", "fp16") or self.kv_dtype not in ("fp32", "bf16", "fp16", "fp8",
                                                                                    "fp8k"):
            raise ValueError(f"{self.name}: bad act/kv dtype {self.act_dtype}/{self.kv_dtype}")
        object.__setattr__(self, "allowed_kv", tuple(self.allowed_kv) or (self.kv_dtype,))
        if self.kv_dtype not in self.allowed_kv:
            raise ValueError(f"{self.name}: default KV dtype {self.kv_dtype} not allowed")

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
        return dataclasses.replace(self, weights=fmt)

    def with_kv(self, kv: str) -> "Target":
        if kv not in self.allowed_kv:
            raise ValueError(f"target {self.name} does not support KV pages {kv}; "
                             f"choose from {', '.join(self.allowed_kv)}")
        return dataclasses.replace(self, kv_dtype=kv)


TARGETS: dict = {
    "h100": Target("h100", 90, WeightFormat.FP8_CHANNEL, (WeightFormat.FP8_CHANNEL, WeightFormat.FP8_BLOCK),
                   act_dtype="bf16", kv_dtype="fp8", num_sms=132, allowed_kv=("fp8", "bf16", "fp8k"),
                   description="NVIDIA H100 (sm_90a): FP8 e4m3 linears and KV pages, bf16 activations "
                               "(bf16 pages: twice the memory, 3 dB more accurate; attention measured 1.21x "
                               "faster on an H200, 1.65x before fp8 pages got fp16 dots; fp8k: e4m3 K beside "
                               "bf16 V pages, fp8 Q.K^T, untimed)"),
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
    """Launch configuration of one kernel family on one target (all constexpr or launch-time).
    ``None`` warps or stages: the JIT launcher's rule for the shapes the config gives
    (``launch_warps`` / ``LAUNCH_STAGES`` of the op's module in lpm_rt.ops), so an untuned
    artifact runs what the JIT path runs."""

    num_warps: int | None
    num_stages: int | None
    tiles: dict = field(default_factory=dict)     # BLOCK_* constexprs (clamped to the problem later)


# Keys: kernel family names used by compile/kernels.py. TUNING says which entries were tuned.
KERNEL_TABLES: dict = {
    "h100": {
        # H200 sweep (lpm-17b 480P, 120-token fp8 pages): one page per 128-key block (PAGE_TILES)
        # on two warpgroups, 2 stages: 31.4 ms at 6 frames against 43.9 ms for 128x64 key blocks
        # crossing pages; 23.0 ms with fp16 dots (F16_DOTS, set by the kernel list for fp8 pages
        # under bf16 q; bench/results/gpu-20261204-3, where 64x128 on 4 warps was 2.5% faster for
        # fp8 pages and 46% slower for bf16 pages). FP8_Q off: the fp8 Q.K^T / P.V dots measured slower (39.1 ms at their
        # best tiles) and 14x the error (relative L2 3.7e-2 against 2.6e-3) with Triton 3.6.
        "paged_attention": KernelConfig(8, 2, dict(BLOCK_M=128, BLOCK_N=128, PAGE_TILES=True, FP8_Q=False)),
        "paged_attention_small": KernelConfig(4, 3, dict(BLOCK_M=64, BLOCK_N=64, FP8_Q=False)),
        "paged_attention_combine": KernelConfig(4, 1, dict(BLOCK_S=32)),
        # H200 sweep: 128x128 on 8 warps, 3 stages, whole-K accumulation in the FP8 MMA
        # (csrc_triton/fp8_linear.py, FAST_ACCUM): 1253 TFLOP/s at [9360x5120]x[5120x13824]
        # (1141 in the bench table of gpu-20261204-3)
        "fp8_linear": KernelConfig(8, 3, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, FAST_ACCUM=True)),
        # untuned: the JIT launchers' rules (on an H200 the earlier frozen 8-warp cache write took
        # 1.4x the JIT kernel's time at the demo's shapes, bench/results/gpu-20261204-4; the text
        # cross-attention, 1.8x, ran 64-key tiles over a 1-tag prompt: compile/kernels.py now
        # compiles it per key tile and the launcher picks)
        "norm_modulate": KernelConfig(None, 1, {}),
        "cache_write": KernelConfig(None, 1, {}),
        # short key streams (text, a frame's audio window): the head loop is the work
        "cross_attention": KernelConfig(None, None, dict(BLOCK_M=64, BLOCK_N=64)),
    },
    "orin": {
        # sm_87: 164 KB shared memory per SM, mma.sync; fp16 K/V
        "paged_attention": KernelConfig(8, 3, dict(BLOCK_M=128, BLOCK_N=64)),
        "paged_attention_small": KernelConfig(4, 2, dict(BLOCK_M=64, BLOCK_N=64)),
        "paged_attention_combine": KernelConfig(4, 1, dict(BLOCK_S=32)),
        "norm_modulate": KernelConfig(None, 1, {}),
        "cache_write": KernelConfig(None, 1, {}),
        "cross_attention": KernelConfig(None, None, dict(BLOCK_M=64, BLOCK_N=64)),
    },
}

_HEURISTIC = {"kind": "heuristic", "device": None, "date": None, "tuned": [],
              "note": "frozen heuristic tables; no device tuning was done"}
TUNING: dict = {
    "h100": {"kind": "device", "device": "NVIDIA H200 (sm_90, 132 SMs), driver 580.159.04",
             "date": "2026-12-04", "toolchain": "torch 2.11.0+cu130, triton 3.6.0",
             "tuned": ["paged_attention", "fp8_linear"],
             "source": "bench/results/gpu-20261204-2/tune.json (scripts/tune_kernels.py --quick)",
             "note": "the other families are heuristic; the sweep ran on an H200, which has the "
                     "H100's SM and 1.4x its memory bandwidth"},
    "orin": _HEURISTIC,
    "cpu": _HEURISTIC,
}
