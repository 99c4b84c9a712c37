"""Ops with a pure-torch reference (``<op>_ref``, also the CPU fallback) and a launcher (``<op>``).

The launcher dispatches on the process-wide backend: ``"ref"`` (default), ``"triton"`` or
``"aot"``. With ``"triton"`` the launchers always launch the Triton kernels, JIT-compiled (triton
is imported lazily, on the first such call), and raise on inputs the kernels do not support --
never a silent fallback. ``"aot"`` launches the same kernels from the cubins of a loaded
artifact (``lpm_rt.load(DIR)`` installs them; see ``_launch``): nothing is compiled, and a call
no compiled specialization accepts raises ``ArtifactError``.
The Triton paths are registered as torch custom ops (``torch.ops.lpm_rt.*``) so torch.compile
traces them as single nodes.
"""

from __future__ import annotations

_BACKEND = "ref"
BACKENDS = ("ref", "triton", "aot")


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"ops backend {name!r} not in {'/'.join(BACKENDS)}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


from .paged_attention import paged_attention, paged_attention_ref  # noqa: E402
from .cache_write import cache_write, cache_write_ref  # noqa: E402
from .norm_modulate import norm_modulate, norm_modulate_ref  # noqa: E402
from .fp8_linear import fp8_linear, fp8_linear_ref, quantize_fp8_rows, quantize_fp8_weight  # noqa: E402
from .cross_attention import cross_attention, cross_attention_ref  # noqa: E402

__all__ = ["set_backend", "get_backend", "paged_attention", "paged_attention_ref",
           "cache_write", "cache_write_ref", "norm_modulate", "norm_modulate_ref",
           "fp8_linear", "fp8_linear_ref", "quantize_fp8_rows", "quantize_fp8_weight",
           "cross_attention", "cross_attention_ref"]
