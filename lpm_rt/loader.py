"""``lpm_rt.load``: a preset name, the shipped ``demo``, or a model directory -> :class:`Avatar`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import ops
from .cache import TORCH_ACT_DTYPES
from .checkpoint import load_dir
from .config import PRESETS, RuntimeConfig, preset
from .errors import ArtifactError
from .model.online import OnlineLPM
from .session import Avatar

__all__ = ["load", "SHIPPED_DEMO"]

SHIPPED_DEMO = Path(__file__).parent / "assets" / "demo"


def load(src: str = "demo", runtime: RuntimeConfig | None = None, seed: int = 0) -> Avatar:
    """Load a model.

    ``src``: "demo" (the shipped trained demo model when present, else the demo preset with
    deterministic initial weights), another preset name (initial weights), a model directory
    (config.json + *.safetensors), or a compiled artifact directory (manifest.json)."""
    if runtime is not None and runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    src = str(src)
    if src == "demo" and (SHIPPED_DEMO / "config.json").is_file():
        model, _ = load_dir(SHIPPED_DEMO, runtime)
        return Avatar(_place(model), trained=True, source=f"shipped demo model ({SHIPPED_DEMO})")
    if src in PRESETS:
        cfg = preset(src)
        if runtime is not None:
            cfg = cfg.replace(runtime=runtime)
        return Avatar(_place(OnlineLPM(cfg).init_weights(seed)), trained=False,
                      source=f"preset {src!r} with deterministic initial weights (untrained)")
    p = Path(src)
    if (p / "manifest.json").is_file():
        from . import artifact  # noqa: F401  (the AOT loader; see lpm_rt/artifact.py)
        return artifact.load_artifact(p, runtime)
    if p.is_dir():
        model, meta = load_dir(p, runtime)
        return Avatar(_place(model), trained=bool(meta.get("trained", True)), source=str(p))
    raise ArtifactError(f"{src!r} is neither a preset ({', '.join(PRESETS)}) nor a model directory")


def _place(model: OnlineLPM) -> OnlineLPM:
    """Move the model to the runtime's device and dtype (the VAE stays fp32 on CPU, its
    convolutions' weights channels-last: oneDNN decodes the demo's latent frames 1.3-1.4x as
    fast as NCHW, same arithmetic; scripts/cpu_hotpaths.py) and select the runtime's op backend
    (process-wide: ``lpm_rt.ops.set_backend``)."""
    rt = model.cfg.runtime
    dt = TORCH_ACT_DTYPES[rt.dtype]
    if rt.device != "cpu" and not torch.cuda.is_available():
        raise ArtifactError(f"runtime device {rt.device!r} requested but no CUDA device is available")
    if rt.ops_backend == "triton" and rt.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ArtifactError("ops_backend='triton' needs a CUDA device (or TRITON_INTERPRET=1 to "
                            "run the kernels in Triton's interpreter for testing)")
    if rt.ops_backend == "aot":
        from .ops import _launch
        if not _launch.installed():
            raise ArtifactError("ops_backend='aot' runs a compiled artifact's kernels: load one with "
                                "lpm_rt.load(DIR) (lpm-rt compile builds it)")
    ops.set_backend(rt.ops_backend)
    model.backbone.to(rt.device, dt)
    model.refiner.to(rt.device, dt)
    model.vae.to(rt.device, dt if rt.device != "cpu" else torch.float32, memory_format=torch.channels_last)
    return model
