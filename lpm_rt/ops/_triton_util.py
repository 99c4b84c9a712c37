"""Small helpers shared by the Triton launchers (imported lazily: triton is optional)."""

from __future__ import annotations

import torch


def interpreting() -> bool:
    """True when csrc_triton's kernels were decorated under TRITON_INTERPRET=1 (CPU, numpy)."""
    from triton.runtime.interpreter import InterpretedFunction

    from csrc_triton import _fp

    return isinstance(_fp.cast_rne, InterpretedFunction)


def ieee_dots(dtype: torch.dtype) -> bool:
    """Dots in exact fp32: for fp32 data (no TF32), and for bf16 in the interpreter (numpy has no bf16)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def check_device(ref: torch.Tensor, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device}, expected {ref.device}")


_TMA_ALLOCATOR_SET = False


def _tma_scratch(size: int, alignment: int, stream):
    """Triton's allocator for device-side tensor descriptors (global scratch)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def tma_allocator(device: torch.device) -> None:
    """Device-side tensor descriptors (TMA tiles) need Triton's scratch allocator on a GPU: set once."""
    global _TMA_ALLOCATOR_SET
    if device.type == "cuda" and not _TMA_ALLOCATOR_SET:
        import triton

        triton.set_allocator(_tma_scratch)
        _TMA_ALLOCATOR_SET = True
