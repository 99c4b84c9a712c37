"""The cubin launcher's host side, testable without a GPU: manifest records, argument packing
against the compiled contract, scratch sizing, and the cuda-python requirement."""

import builtins
import ctypes
import json

import pytest
import torch

import lpm_rt
from lpm_rt.artifact import CubinKernel, load_kernels


def _record(artifact, role):
    meta = json.loads((artifact("h100") / "manifest.json").read_text())
    return meta, next(k for k in meta["kernels"] if k["role"] == role)


_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8e4nv": torch.float8_e4m3fn,
          "i32": torch.int32, "i64": torch.int64}


def _args(rec):
    """Valid arguments for every parameter: aligned tensors for pointers, 16-multiples for div16 ints."""
    args = {}
    for p in rec["params"]:
        if p["type"].startswith("*"):
            args[p["name"]] = torch.empty(64, dtype=_DTYPE[p["type"][1:]])
        elif p["type"] == "fp32":
            args[p["name"]] = 0.5
        else:
            args[p["name"]] = 32 if p["div16"] else 7
    return args


def test_record_matches_triton_metadata(artifact):
    meta, rec = _record(artifact, "attention")
    assert rec["arch"] == "sm_90a" and rec["file"].startswith("kernels/") and rec["function"] == "_paged_attn_fwd_kernel"
    names = [p["name"] for p in rec["params"]]
    assert "q_ptr" in names and "PAGE_SIZE" not in names and rec["constexprs"]["PAGE_SIZE"] == 8
    # innermost strides were compiled as constexpr 1, never passed
    assert rec["constexprs"]["stride_qd"] == 1 and "stride_qd" not in names
    assert CubinKernel(rec).block == (32 * rec["num_warps"], 1, 1)


def test_pack_order_types_and_scratch(artifact):
    _, rec = _record(artifact, "linear")
    k = CubinKernel(rec)
    args = _args(rec)
    vals = k.pack(args, scratch=(0, 4096))
    assert len(vals) == len(rec["params"]) + 2              # + global and profile scratch pointers
    for p, v in zip(rec["params"], vals):
        if p["type"].startswith("*"):
            assert isinstance(v, ctypes.c_void_p) and v.value == args[p["name"]].data_ptr()
        elif p["type"] == "i32":
            assert isinstance(v, ctypes.c_int32) and v.value == args[p["name"]]
    assert vals[-2].value is None and vals[-1].value == 4096
    assert k.scratch_bytes((3, 2, 1)) == (6 * rec["global_scratch"][0], 6 * rec["profile_scratch"][0])


def test_pack_enforces_the_compiled_contract(artifact):
    _, rec = _record(artifact, "attention")
    k = CubinKernel(rec)
    args = _args(rec)
    div = next(p["name"] for p in rec["params"] if p["div16"] and not p["type"].startswith("*"))
    with pytest.raises(lpm_rt.ArtifactError, match=f"{div}=8 must be a multiple of 16"):
        k.pack({**args, div: 8})
    ptr = next(p["name"] for p in rec["params"] if p["type"].startswith("*"))
    with pytest.raises(lpm_rt.ArtifactError, match=f"pointer {ptr} is not 16-byte aligned"):
        k.pack({**args, ptr: args[ptr].data_ptr() + 4})
    with pytest.raises(lpm_rt.ArtifactError, match="HEAD_DIM=32 but the cubin was compiled with HEAD_DIM=16"):
        k.pack({**args, "HEAD_DIM": 32})
    assert k.pack({**args, "HEAD_DIM": 16})                 # the compiled value is accepted
    with pytest.raises(lpm_rt.ArtifactError, match="q_ptr is torch.float32 but the cubin was compiled for bf16"):
        k.pack({**args, "q_ptr": torch.empty(64, dtype=torch.float32)})
    with pytest.raises(lpm_rt.ArtifactError, match="missing argument"):
        k.pack({n: v for n, v in args.items() if n != "q_ptr"})
    with pytest.raises(lpm_rt.ArtifactError, match="unknown arguments"):
        k.pack({**args, "bogus": 1})


def test_missing_cuda_python_asks_for_the_gpu_extra(artifact, monkeypatch):
    meta, _ = _record(artifact, "attention")
    real = builtins.__import__

    def no_cuda(name, *a, **kw):
        if name.startswith("cuda"):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_cuda)
    with pytest.raises(lpm_rt.ArtifactError, match=r"lpm-rt\[gpu\]"):
        load_kernels(artifact("h100"), meta)
