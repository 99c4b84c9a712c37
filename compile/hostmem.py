"""Host memory of the compile: give freed heap pages back to the OS between steps.

glibc keeps the pages of freed allocations below its mmap threshold (which grows to 32 MB as
large blocks are freed), so a compile's per-weight temporaries stay resident: quantizing
edge-1.3b's backbone left 7.6 GB of them (16.7 GB resident, 9.1 GB after ``malloc_trim``), and
the orin compile of edge-1.3b was killed at 24 GB in its ONNX step without the trims."""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_freed"]

_LIBC = None


def release_freed() -> None:
    """``malloc_trim(0)`` where the C library has it (glibc); a no-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)
