"""Ops with a pure-torch reference (``<op>_ref``, also the CPU fallback) and a launcher (``<op>``).

The launcher dispatches on the process-wide backend: ``"ref"`` (default), ``"triton"`` or
``"aot"``. With ``"triton"`` the launchers always launch the Triton kernels, JIT-compiled (triton
is imported lazily, on the first such call), and raise on inputs the kernels do not support --
never a silent fallback. ``"aot"`` launches the same kernels from the cubins of a loaded
artifact (``lpm_rt.load(DIR)`` installs them; see ``_launch``): nothing is compiled, and a call
no compiled specialization accepts raises ``ArtifactError``.
The Triton paths are registered as torch custom ops (``torch.ops.lpm_rt.*``) so torch.compile
traces them as single nodes; eager calls with no input asking for gradients (the runtime's) go to
the implementation directly (:func:`direct`).
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


def direct(*tensors) -> bool:
    """Whether a launcher calls its Triton implementation directly rather than through its custom
    op: in eager mode, under no dispatch mode, with no input requiring grad. The op's dispatch
    costs microseconds on every call, and the first call of any custom op imports torch._dynamo
    (the imports it pulled in led the profile of a 7.4 s session open on an H200; 1.7 s with
    direct calls: bench/results/gpu-20261204-3 and -4, cold_aot.json). Under
    torch.compile the op is what gets traced, a dispatch mode (fake tensors, the launch counter of
    ``lpm_rt.benchmark.launches``) sees it, and with gradients it raises (no backward is registered)
    instead of dropping them."""
    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


from .paged_attention import paged_attention, paged_attention_ref  # noqa: E402
from .cache_write import cache_write, cache_write_ref  # noqa: E402
from .norm_modulate import norm_modulate, norm_modulate_ref  # noqa: E402
from .fp8_linear import fp8_linear, fp8_linear_ref, quantize_fp8_rows, quantize_fp8_weight  # noqa: E402
from .fp8_linear import dequantize_fp8_weight  # noqa: E402
from .cross_attention import cross_attention, cross_attention_ref  # noqa: E402
from .cross_attention import absorbs, cross_attention_out, cross_attention_out_ref  # noqa: E402

__all__ = ["set_backend", "get_backend", "direct", "paged_attention", "paged_attention_ref",
           "cache_write", "cache_write_ref", "norm_modulate", "norm_modulate_ref",
           "fp8_linear", "fp8_linear_ref", "quantize_fp8_rows", "quantize_fp8_weight", "dequantize_fp8_weight",
           "cross_attention", "cross_attention_ref", "cross_attention_out", "cross_attention_out_ref", "absorbs"]
