"""Compiled artifacts (DESIGN section 5): verify, describe and load what ``lpm-rt compile`` wrote.

    DIR/manifest.json        format, format_version, model config + hash, target (name, arch),
                             quantization, toolchain, files {relpath: sha256}, kernels [...]
    DIR/weights/{backbone,refiner,vae}.safetensors
    DIR/kernels/<name>.cubin (GPU targets)         DIR/onnx/*.onnx (orin)

Weight format (shared with the compiler, which imports it from here): a quantized linear weight
``W`` [N, K] is stored as ``key`` (float8_e4m3fn or int8) plus ``key + QSCALE_SUFFIX`` (fp32):
``[N]`` per output channel, or ``[N, K / 128]`` per 1 x 128 block, so that
``W ~= q * scale`` (:func:`dequantize`). Every other tensor is stored in the target's dtype.

Loading checks, before any work: the manifest's format and version, every listed file's sha256
(and that no unlisted file sits in weights/, kernels/ or onnx/), the target against this machine
(GPU and compute capability), and the toolchain (lpm_rt version; CUDA driver vs the compiler's).
Any failure raises :class:`ArtifactError` naming the file or the mismatch. JSON and safetensors
only: nothing is unpickled, nothing is compiled.

GPU targets load their cubins with cuda-python (:class:`CubinKernel`): block = 32 * num_warps
threads, dynamic shared memory opted in above 48 KB, and the two scratch pointers triton 3.x
appends to every kernel's parameter list (global scratch, profile scratch: NULL when the
compiled size is 0, else a per-program buffer).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import PARTS, sha256_file
from .config import LPMConfig, RuntimeConfig
from .errors import ArtifactError

__all__ = ["FORMAT", "FORMAT_VERSION", "QSCALE_SUFFIX", "QUANTIZED_RE", "config_hash", "dequantize",
           "dequantize_state_dict", "iter_dequantized", "read_manifest", "verify", "machine_problems", "describe",
           "load_artifact", "CubinKernel", "load_kernels"]

FORMAT, FORMAT_VERSION = "lpm-rt-artifact", 1
QSCALE_SUFFIX = ".qscale"
# The linears of the DiT blocks: where the FLOPs are, and what fp8_linear / TensorRT INT8 run.
QUANTIZED_RE = re.compile(r"^blocks\.\d+\.((self_attn|cross_attn|audio_attn)\.(q|k|v|o)|ffn\.(0|2))\.weight$")
SUBDIRS = ("weights", "kernels", "onnx")
SMEM_DEFAULT = 48 * 1024          # dynamic shared memory a launch gets without the opt-in


def config_hash(cfg_dict: dict) -> str:
    """sha256 of the canonical JSON of a config dict (what the artifact was compiled for)."""
    return hashlib.sha256(json.dumps(cfg_dict, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- weights
def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """q: [N, K] fp8/int8; scale: [N] (per channel) or [N, K/B] (1 x B blocks) -> [N, K] ``dtype``."""
    N, K = q.shape
    x = q.to(torch.float32)
    if scale.dim() == 1:
        return (x * scale.float()[:, None]).to(dtype)
    nb = scale.shape[1]
    return (x.view(N, nb, K // nb) * scale.float()[..., None]).view(N, K).to(dtype)


def iter_dequantized(sd: dict, dtype=torch.float32):
    """Stored tensors -> (name, tensor in ``dtype``) one at a time (quantized pairs merged)."""
    for k, v in sd.items():
        if k.endswith(QSCALE_SUFFIX):
            continue
        s = sd.get(k + QSCALE_SUFFIX)
        yield k, dequantize(v, s, dtype) if s is not None else (v.to(dtype) if v.is_floating_point() else v)


def dequantize_state_dict(sd: dict, dtype=torch.float32) -> dict:
    """Stored tensors -> a plain state dict in ``dtype`` (quantized pairs merged)."""
    return dict(iter_dequantized(sd, dtype))


# ---------------------------------------------------------------- verification
def read_manifest(path) -> dict:
    d = Path(path)
    mf = d / "manifest.json"
    if not mf.is_file():
        raise ArtifactError(f"{d}: no manifest.json (not a compiled artifact)")
    try:
        meta = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{mf}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                            f"expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mf}: format_version {meta.get('format_version')!r} is not supported by this "
                            f"lpm_rt (reads version {FORMAT_VERSION}); recompile with this lpm_rt")
    for key in ("config", "config_hash", "target", "files", "toolchain", "kernels", "quantization"):
        if key not in meta:
            raise ArtifactError(f"{mf}: missing field {key!r}")
    if config_hash(meta["config"]) != meta["config_hash"]:
        raise ArtifactError(f"{mf}: config_hash does not match the recorded config (manifest edited)")
    return meta


def verify_files(d: Path, meta: dict) -> None:
    """Every listed file present with its sha256; no unlisted file in the artifact's folders."""
    files = meta["files"]
    for rel, digest in files.items():
        f = d / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ArtifactError(f"{d / 'manifest.json'}: file entry {rel!r} escapes the artifact")
        if not f.is_file():
            raise ArtifactError(f"{f}: missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{f}: sha256 mismatch (file corrupted or modified)")
    for sub in SUBDIRS:
        if (d / sub).is_dir():
            for f in sorted((d / sub).rglob("*")):
                if f.is_file() and f.relative_to(d).as_posix() not in files:
                    raise ArtifactError(f"{f}: not listed in manifest.json (unexpected file)")


def _version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def _cuda_driver_version():
    """(major, minor) of the installed CUDA driver API, or None."""
    if not torch.cuda.is_available():
        return None
    try:
        from cuda.bindings import driver as cu
        err, v = cu.cuDriverGetVersion()
        return (v // 1000, (v % 1000) // 10) if _ok(err) else None
    except ImportError:
        return None


def machine_problems(meta: dict) -> list:
    """Why this machine cannot run the artifact ([] if it can)."""
    from . import __version__

    probs = []
    tgt = meta["target"]
    built = meta["toolchain"].get("lpm_rt", "0.0")
    if _version_tuple(built) != _version_tuple(__version__):
        probs.append(f"toolchain: compiled by lpm_rt {built}, this is lpm_rt {__version__} "
                     f"(artifacts are read by the same major.minor)")
    sm = tgt.get("sm")
    if sm is None:
        return probs
    want = f"{tgt['name']} artifact needs an {tgt['arch']} GPU (compute capability {sm // 10}.{sm % 10})"
    if not torch.cuda.is_available():
        return probs + [f"target: {want}; this machine has no CUDA GPU"]
    cap = torch.cuda.get_device_capability()
    have = cap[0] * 10 + cap[1]
    exact = tgt["arch"].endswith("a")          # sm_90a code runs on sm_90 only
    if cap[0] != sm // 10 or (have != sm if exact else have < sm):
        probs.append(f"target: {want}; this machine's GPU {torch.cuda.get_device_name()} is "
                     f"sm_{have}")
    need = meta["toolchain"].get("cuda")
    drv = _cuda_driver_version()
    if need and drv is not None and drv < _version_tuple(need):
        probs.append(f"toolchain: cubins built with CUDA {need}, the driver supports CUDA "
                     f"{drv[0]}.{drv[1]}; update the driver")
    return probs


def verify(path) -> dict:
    """Full verification (format, hashes, machine, toolchain); returns the manifest."""
    d = Path(path)
    meta = read_manifest(d)
    verify_files(d, meta)
    probs = machine_problems(meta)
    if probs:
        raise ArtifactError(f"{d}: cannot run here: " + "; ".join(probs))
    return meta


def describe(path) -> dict:
    """What an artifact targets and whether this machine can run it (for ``lpm-rt info DIR``)."""
    d = Path(path)
    meta = read_manifest(d)
    try:
        verify_files(d, meta)
        integrity = "ok"
    except ArtifactError as e:
        integrity = str(e)
    probs = machine_problems(meta)
    size = sum((d / f).stat().st_size for f in meta["files"] if (d / f).is_file())
    stream = meta["config"]["stream"]
    return {"path": str(d), "model": meta["config"]["model"]["name"], "config_hash": meta["config_hash"],
            "resolution": f"{stream['width']}x{stream['height']}", "target": meta["target"], "quantization": {k: v for k, v in meta["quantization"].items() if k != "layers"},
            "kernels": [k["name"] for k in meta["kernels"]], "onnx": sorted(f for f in meta["files"] if f.startswith("onnx/")),
            "kernel_tuning": meta.get("kernel_tuning"), "toolchain": meta["toolchain"], "bytes": size,
            "integrity": integrity,
            "ops_backend": "aot (the kernels above, launched with cuda-python; nothing compiled; the "
                           "per-chunk step replayed as one CUDA graph)"
            if meta["target"].get("sm") is not None else "ref (pure torch)",
            "runnable_here": integrity == "ok" and not probs, "problems": probs}


# ---------------------------------------------------------------- loading


def _load_weights(d: Path, meta: dict, model, dtype, fp8_gemms: bool = False) -> int:
    """Load every part; with ``fp8_gemms`` the e4m3 block linears run as FP8 GEMMs from their
    stored codes (:func:`lpm_rt.model.fp8.load_fp8_blocks_`). Returns the blocks switched."""
    from safetensors.torch import load_file

    from .model.fp8 import load_fp8_blocks_

    switched = 0
    for part in PARTS:
        rel = f"weights/{part}.safetensors"
        if rel not in meta["files"]:
            raise ArtifactError(f"{d}: {rel} is not listed in manifest.json")
        stored = load_file(str(d / rel))
        sd = dequantize_state_dict(stored, dtype)
        missing, unexpected = getattr(model, part).load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ArtifactError(f"{d / rel}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        if fp8_gemms and part in ("backbone", "refiner"):
            switched += load_fp8_blocks_(getattr(model, part), stored, QSCALE_SUFFIX)
    return switched


def load_artifact(path, runtime: RuntimeConfig | None = None):
    """Verify ``path`` and return an :class:`lpm_rt.Avatar` streaming from it.

    cpu target: the reference path from the stored (fp32/bf16) weights. GPU targets (only on a
    matching GPU): cubins loaded with cuda-python, exposed as ``avatar.kernels`` and, with the
    default ``aot`` ops backend, installed as the kernels every op launches (nothing is compiled
    on the device; see ``lpm_rt.ops._launch``); the model's weights are dequantized onto the GPU
    in the target's activation dtype, except that e4m3-stored block linears run as FP8 GEMMs
    from their stored codes (backends ``aot`` and ``triton``)."""
    from .loader import _place
    from .model.online import OnlineLPM
    from .session import Avatar

    d = Path(path)
    meta = verify(d)
    try:
        cfg = LPMConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{d / 'manifest.json'}: bad config ({e})") from None
    tgt = meta["target"]
    gpu = tgt.get("sm") is not None
    if runtime is None:       # on its GPU: the cubins, the per-chunk step replayed as one CUDA graph
        runtime = cfg.runtime.replace(device="cuda" if gpu else "cpu", dtype=tgt["act_dtype"],
                                      kv_dtype=tgt["kv_dtype"], ops_backend="aot" if gpu else "ref",
                                      cuda_graphs=gpu)
    cfg = cfg.replace(runtime=runtime)
    kernels = load_kernels(d, meta) if gpu else {}
    if runtime.ops_backend == "aot":
        from .ops import _launch
        _launch.install(kernels)
    model = OnlineLPM(cfg)
    _load_weights(d, meta, model, torch.float32, fp8_gemms=runtime.ops_backend in ("triton", "aot"))
    avatar = Avatar(_place(model), trained=bool(meta.get("trained", False)),
                    source=f"artifact {d} ({tgt['name']}, {tgt['arch']})")
    avatar.kernels = kernels
    avatar.manifest = meta
    return avatar


# ---------------------------------------------------------------- cubins (GPU)
def _cu():
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        raise ArtifactError("loading GPU kernels needs cuda-python: pip install 'lpm-rt[gpu]'") from None
    return cu


def _ok(err) -> bool:
    """CUresult is an enum in cuda-python (IntEnum in 12.x, its own enum type later)."""
    return int(getattr(err, "value", err)) == 0


def _check(res, what):
    err, *rest = res if isinstance(res, tuple) else (res,)
    if not _ok(err):
        raise ArtifactError(f"CUDA driver error {err} in {what}")
    return rest[0] if len(rest) == 1 else (rest or None)


_CTYPES = {"i1": ctypes.c_int8, "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32,
           "i64": ctypes.c_int64, "u1": ctypes.c_uint8, "u8": ctypes.c_uint8, "u16": ctypes.c_uint16,
           "u32": ctypes.c_uint32, "u64": ctypes.c_uint64, "fp32": ctypes.c_float, "fp64": ctypes.c_double}

_TRITON_OF = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
              torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5", torch.int8: "i8", torch.int16: "i16",
              torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}


@dataclass
class CubinKernel:
    """One compiled kernel: its manifest record and (on a GPU) the loaded CUfunction.

    ``record``: {"name", "function", "file", "num_warps", "shared", "params": [{"name", "type",
    "div16"}], "constexprs", "global_scratch": [size, align], "profile_scratch": [size, align]}."""

    record: dict
    function: object = None

    @property
    def block(self) -> tuple:
        return (32 * int(self.record["num_warps"]), 1, 1)

    def pack(self, args: dict, scratch: tuple = (0, 0)) -> list:
        """Kernel arguments by name -> ctypes values in parameter order, then the two scratch
        pointers. Pointers: tensors or integer addresses (16-byte aligned when declared);
        tensors must have the compiled element type; integers declared ``div16`` must be
        multiples of 16; constexprs may be passed only with their compiled value. Raises
        ArtifactError on any violation of the compiled contract."""
        return self.pack_args(args) + [ctypes.c_void_p(scratch[0]), ctypes.c_void_p(scratch[1])]

    def pack_args(self, args: dict) -> list:
        """:meth:`pack` without the scratch pointers (what :meth:`launch` appends)."""
        rec = self.record
        for name, val in rec.get("constexprs", {}).items():
            if name in args and args[name] != val:
                raise ArtifactError(f"{rec['name']}: {name}={args[name]!r} but the cubin was compiled "
                                    f"with {name}={val!r}")
        known = {p["name"] for p in rec["params"]} | set(rec.get("constexprs", {}))
        extra = set(args) - known
        if extra:
            raise ArtifactError(f"{rec['name']}: unknown arguments {sorted(extra)}")
        out = []
        for p in rec["params"]:
            name, ty = p["name"], p["type"]
            if name not in args:
                raise ArtifactError(f"{rec['name']}: missing argument {name!r}")
            v = args[name]
            if ty.startswith("*"):
                if isinstance(v, torch.Tensor) and _TRITON_OF.get(v.dtype) != ty[1:]:
                    raise ArtifactError(f"{rec['name']}: {name} is {v.dtype} but the cubin was compiled "
                                        f"for {ty[1:]}")
                addr = v.data_ptr() if hasattr(v, "data_ptr") else int(v or 0)
                if p.get("div16") and addr % 16:
                    raise ArtifactError(f"{rec['name']}: pointer {name} is not 16-byte aligned")
                out.append(ctypes.c_void_p(addr))
            else:
                if ty not in _CTYPES:
                    raise ArtifactError(f"{rec['name']}: unsupported parameter type {ty}")
                if p.get("div16") and int(v) % 16:
                    raise ArtifactError(f"{rec['name']}: {name}={v} must be a multiple of 16 (compiled so)")
                out.append(_CTYPES[ty](float(v) if ty.startswith("fp") else int(v)))
        return out

    def scratch_bytes(self, grid) -> tuple:
        """Bytes of (global, profile) scratch a launch over ``grid`` needs (per program x programs)."""
        n = grid[0] * grid[1] * grid[2]
        return tuple(n * int(self.record.get(k, [0, 1])[0]) for k in ("global_scratch", "profile_scratch"))

    def launch(self, grid, args: dict, stream: int | None = None, packed: list | None = None) -> None:
        """Launch on ``stream`` (a CUstream handle as int; default: torch's current stream, so
        the launch is ordered with torch's work and lands in a CUDA graph being captured).
        ``packed``: :meth:`pack_args` of ``args`` when the caller already checked them."""
        cu = _cu()
        if stream is None:
            stream = torch.cuda.current_stream().cuda_stream
        grid = tuple(grid) + (1,) * (3 - len(grid))
        core = self.pack_args(args) if packed is None else packed
        bufs = [torch.empty(b, dtype=torch.uint8, device="cuda") if b else None for b in self.scratch_bytes(grid)]
        vals = core + [ctypes.c_void_p(0 if b is None else b.data_ptr()) for b in bufs]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        _check(cu.cuLaunchKernel(self.function, *grid, *self.block, int(self.record["shared"]), stream,
                                 ctypes.addressof(params), 0), f"cuLaunchKernel({self.record['name']})")


def _ensure_context(cu):
    torch.cuda.init()
    torch.cuda.current_device()
    ctx = _check(cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if not int(ctx):
        dev = _check(cu.cuDeviceGet(torch.cuda.current_device()), "cuDeviceGet")
        ctx = _check(cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        _check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


def load_kernels(d: Path, meta: dict) -> dict:
    """Load every kernel of the manifest: {name: CubinKernel} with its CUfunction."""
    cu = _cu()
    _check(cu.cuInit(0), "cuInit")
    _ensure_context(cu)
    out = {}
    for rec in meta["kernels"]:
        f = d / rec["file"]
        mod = _check(cu.cuModuleLoadData(f.read_bytes()), f"cuModuleLoadData({f})")
        fn = _check(cu.cuModuleGetFunction(mod, rec["function"].encode()), f"cuModuleGetFunction({rec['function']})")
        if int(rec["shared"]) > SMEM_DEFAULT:
            attr = cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(cu.cuFuncSetAttribute(fn, attr, int(rec["shared"])), f"cuFuncSetAttribute({rec['name']})")
        out[rec["name"]] = CubinKernel(rec, fn)
    return out
