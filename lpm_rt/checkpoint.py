"""Model directories: ``config.json`` + ``*.safetensors`` with every file's sha256; Wan2.1 import.

Layout written by :func:`save`:

    DIR/config.json            {"format": "lpm-rt-checkpoint", "format_version": 1,
                                "config": LPMConfig.to_dict(), "files": {name: sha256}, ...}
    DIR/backbone.safetensors   the causal backbone (Wan2.1 names + LPM additions)
    DIR/refiner.safetensors    the one-step refiner (same names, fewer blocks)
    DIR/vae.safetensors

Loading never executes code: JSON and safetensors only, and every hash is checked first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import LPMConfig
from .errors import ArtifactError
from .model.dit import LPMDiT, lpm_only_keys
from .model.online import OnlineLPM

__all__ = ["save", "load_dir", "sha256_file", "load_wan_state_dict", "PARTS"]

FORMAT, FORMAT_VERSION = "lpm-rt-checkpoint", 1
PARTS = ("backbone", "refiner", "vae")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(model: OnlineLPM, out_dir, extra: dict | None = None, dtype=None, state_dicts: dict | None = None) -> Path:
    """Write ``model`` to ``out_dir`` (weights cast to ``dtype`` if given). ``state_dicts``
    (part -> whole tensors) replaces the parts' own ``state_dict()`` (the trainer's gathered
    FSDP weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for part in PARTS:
        own = (state_dicts or {}).get(part) or getattr(model, part).state_dict()
        sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
              for k, v in own.items()}
        name = f"{part}.safetensors"
        save_file(sd, str(out / name), metadata={"format": "pt"})
        files[name] = sha256_file(out / name)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_dict(), "files": files}
    meta.update(extra or {})
    (out / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def load_dir(path, runtime=None) -> tuple:
    """Verify and load a model directory -> (OnlineLPM, metadata dict). Raises ArtifactError."""
    d = Path(path)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ArtifactError(f"{d}: no config.json (not a model directory)")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{cfg_path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                            f"expected {FORMAT!r} v{FORMAT_VERSION}")
    for name, digest in meta.get("files", {}).items():
        f = d / name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{f}: sha256 mismatch (file corrupted or modified)")
    try:
        cfg = LPMConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{cfg_path}: bad config ({e})") from None
    if runtime is not None:
        cfg = cfg.replace(runtime=runtime)
    model = OnlineLPM(cfg)
    for part in PARTS:
        name = f"{part}.safetensors"
        if name not in meta.get("files", {}):
            raise ArtifactError(f"{d}: {name} is not listed in config.json")
        sd = load_file(str(d / name))
        missing, unexpected = getattr(model, part).load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ArtifactError(f"{d / name}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model, meta


def load_wan_state_dict(dit: LPMDiT, sd: dict, strip_prefixes=("model.", "module.")) -> list:
    """Load a Wan2.1 (or Self-Forcing / CausVid / LongLive) DiT state dict into ``dit``.

    Every Wan key must exist in ``dit`` with the same shape; the only keys ``dit`` may lack in
    ``sd`` are LPM's additions (returned, left at their initial values). Raises ArtifactError."""
    clean = {}
    for k, v in sd.items():
        for p in strip_prefixes:
            if k.startswith(p):
                k = k[len(p):]
        clean[k] = v
    own = dit.state_dict()
    unexpected = sorted(set(clean) - set(own))
    missing = sorted(set(own) - set(clean) - set(lpm_only_keys(own)))
    bad = [k for k in clean if k in own and tuple(clean[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or bad:
        raise ArtifactError(f"not a matching Wan2.1 state dict: unexpected {unexpected[:5]}, "
                            f"missing {missing[:5]}, shape mismatch {bad[:5]}")
    with torch.no_grad():
        for k, v in clean.items():
            own[k].copy_(v)
    return sorted(set(lpm_only_keys(own)))
