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


def check_page_scales(k_pages, v_pages, k_scale, v_scale, what: str = "") -> None:
    """Per-page per-head scales [P, H] fp32 for each fp8 page tensor, and none for the others (the
    reference would apply a scale Triton's 16-bit path ignores): raise, naming the scale."""
    P, H = k_pages.shape[0], k_pages.shape[2]
    for name, pages, sc in (("k_scale", k_pages, k_scale), ("v_scale", v_pages, v_scale)):
        if pages.dtype == torch.float8_e4m3fn:
            if sc is None or tuple(sc.shape) != (P, H) or sc.dtype != torch.float32:
                raise ValueError(f"fp8 pages need {name}: [P, H] float32{what}")
        elif sc is not None:
            raise ValueError(f"{name} given for {name[0].upper()} pages that are not fp8")


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
