"""Ahead-of-time compile of the csrc_triton kernels for a GPU target on a GPU-less host, and a
check of the machine code: the MMA instructions in the SASS are the ones the kernel is meant for
(QGMMA = fp8 wgmma on sm_90a, HGMMA = fp16/bf16 wgmma on sm_90a, HMMA = mma.sync on sm_80/87).

    python -m lpm_rt.benchmark.sass [--json]     (exit 1 if an expectation fails)

Must run with TRITON_INTERPRET unset: under the interpreter ``@triton.jit`` yields
InterpretedFunction objects, which ``triton.compile`` cannot lower.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

MMA_RE = re.compile(r"\b(QGMMA|HGMMA|IGMMA|HMMA|IMMA)\b")
STL_RE = re.compile(r"\bSTL(?:\.\w+)*\b")           # stores to local memory: spilled registers
F2F_RE = re.compile(r"\bF2F\.\w+")                 # one value per instruction on the conversion pipe


@dataclass
class Spec:
    """One kernel variant: pointer element types by parameter name, constexpr values, target arch."""

    module: str
    kernel: str
    pointers: dict
    constexprs: dict
    arch: int
    expect: str | None          # MMA instruction that must appear (None: no MMA expected)
    label: str
    num_warps: int = 4
    num_stages: int = 2
    floats: tuple = field(default=("qk_scale", "eps"))
    div16: tuple = field(default=("K", "N", "kv_per_split"))   # sizes the runtime keeps multiples of 16
    unaligned: tuple = field(default=("stride_ksp", "stride_vsp", "stride_tb", "stride_qb", "stride_lb",
                                      "stride_ls", "stride_qb", "stride_wsn", "stride_sb", "stride_hb"))


UNIT = re.compile(r"^stride_(qd|kd|vd|od|ksh|vsh|tp|pd|ll|lh|xk|wk|on|wsk|xc|hc|sc|yc|cd|sd|kpd|vpd|rn|gn)$")


def signature_for(fn, spec: Spec) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ASTSource, the way the JIT would specialize aligned,
    contiguous tensors: '*<dtype>' per pointer (declared 16-byte aligned: tt.divisibility 16),
    innermost strides fixed to constexpr 1 and sizes/strides that are multiples of 16 declared so
    (tt.divisibility 16) -- without these hints loads and masks stay scalar and the software
    pipeliner cannot use cp.async, exactly what the JIT infers from actual arguments; other
    integers 'i32', floats 'fp32'."""
    sig, attrs, ce = {}, {}, dict(spec.constexprs)
    for i, name in enumerate(fn.arg_names):
        if name in ce or fn.params[i].is_constexpr:      # declared constexprs keep their defaults
            sig[name] = "constexpr"
            ce.setdefault(name, fn.params[i].default)
        elif UNIT.match(name):
            sig[name], ce[name] = "constexpr", 1
        elif name in spec.pointers:
            sig[name] = "*" + spec.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in spec.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if (name.startswith("stride_") and name not in spec.unaligned) or name in spec.div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, ce, attrs


def compile_spec(spec: Spec):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(spec.module), spec.kernel)
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError(f"{spec.kernel} is {type(fn).__name__}: unset TRITON_INTERPRET to compile")
    sig, ce, attrs = signature_for(fn, spec)
    src = ASTSource(fn, signature=sig, constexprs=ce, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", spec.arch, 32),
                          options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})


def cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def sass_of(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump(), "--dump-sass", f.name], check=True, capture_output=True,
                              text=True).stdout


def _attn(arch, q, kv, fp8_q, expect, label, d=128, page=120, stages=None, v=None, **extra):
    """A paged-attention variant at the tiles the launcher picks for 1560 queries (``extra``
    constexprs and ``stages`` override them; ``v`` the V pages' type where it is not K's)."""
    ptr = {"q_ptr": q, "k_ptr": kv, "v_ptr": v or kv, "ks_ptr": "fp32", "vs_ptr": "fp32", "table_ptr": "i32",
           "lens_ptr": "i32", "o_ptr": q, "lse_ptr": "fp32"}
    import torch

    from lpm_rt.ops.paged_attention import _config

    bm, bn, warps, st, page_tiles = _config(1560, d, page, torch.device("cuda"),          # the launcher's
                                            (arch // 10, arch % 10))                      # choice there
    ce = dict(PAGE_SIZE=page, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, KV_FP8=kv == "fp8e4nv", FP8_Q=fp8_q,
              SPLIT=False, IEEE=False, FIX_ROUND=False, PAGE_TILES=page_tiles, V_TRANS_LOAD=False,
              PEEL_LAST=True)
    ce.update(extra)
    return Spec("csrc_triton.paged_attention", "_paged_attn_fwd_kernel", ptr, ce, arch, expect, label,
                num_warps=warps, num_stages=stages or st)


def wgmma_waited(sass: str) -> tuple[int, int]:
    """(wgmma instructions, those that wait on their own group): ptxas may serialize a kernel's
    wgmma -- every HGMMA/QGMMA then closes its group (``gsb0``) and is waited on alone, with no
    MMA in flight behind another -- when it cannot keep the accumulators safe (seen on the peeled
    form over 16-bit V pages). Triton's own groups close once per dot."""
    g = re.findall(r"\b[HQI]GMMA\.[^;]*;", sass)
    return len(g), sum("gsb0" in x for x in g)


def loop_sizes(sass: str) -> list[int]:
    """Instructions in each loop body (from a backward branch's target to the branch), in program
    order: for the attention kernels the first is the key-block loop, whose size is the issue
    cost of one key block per thread."""
    ins = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    sizes = []
    for addr, op in ins:
        m = re.search(r"\bBRA\s+(?:`\(\S*\)\s*)?0x([0-9a-f]+)", op)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            sizes.append(sum(1 for a, _ in ins if lo <= a <= addr))
    return sizes


def exp_in_flight(sass: str) -> int:
    """MUFU.EX2 instructions issued while a wgmma is outstanding (after a *GMMA, before the next
    WARPGROUP.DEPBAR): the softmax's exponentials overlapping the tensor cores, in program order."""
    n, pending = 0, False
    for m in re.finditer(r"\b(?:[HQI]GMMA|WARPGROUP\.DEPBAR|MUFU\.EX2)\b", sass):
        tok = m.group(0)
        if tok.endswith("GMMA"):
            pending = True
        elif tok.startswith("WARPGROUP"):
            pending = False
        elif pending:
            n += 1
    return n


def specs() -> list[Spec]:
    lin_ptr = {"x_ptr": "fp8e4nv", "w_ptr": "fp8e4nv", "xs_ptr": "fp32", "ws_ptr": "fp32", "bias_ptr": "bf16",
               "res_ptr": "bf16", "gate_ptr": "fp32", "out_ptr": "bf16"}
    lin_ce = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, BLOCK_SCALE=False, HAS_BIAS=True,
                  GELU=True, RESIDUAL=False, FIX_ROUND=False, QUANT_X=False, FAST_ACCUM=True,
                  TMA=False)
    nm_ptr = {"x_ptr": "bf16", "shift_ptr": "bf16", "scale_ptr": "bf16", "y_ptr": "fp8e4nv", "ys_ptr": "fp32"}
    cw = {"k_ptr": "bf16", "v_ptr": "bf16", "cos_ptr": "fp32", "sin_ptr": "fp32", "slot_ptr": "i64",
          "kp_ptr": "fp8e4nv", "vp_ptr": "fp8e4nv", "ks_ptr": "fp32", "vs_ptr": "fp32", "q_ptr": "bf16",
          "qo_ptr": "bf16", "shift_ptr": "fp32", "qw_ptr": "bf16", "kw_ptr": "bf16"}
    comb = {"part_ptr": "fp32", "lse_ptr": "fp32", "o_ptr": "bf16"}
    out = [
        _attn(90, "bf16", "fp8e4nv", True, "QGMMA", "paged_attention fp8 pages, FP8-Q, d128"),
        _attn(90, "bf16", "fp8e4nv", False, "HGMMA", "paged_attention fp8 pages, bf16 dots, d128", PEEL_LAST=False),
        _attn(90, "bf16", "fp8e4nv", False, "HGMMA", "paged_attention fp8 pages, fp16 dots, d128", F16_DOTS=True),
        _attn(90, "bf16", "fp8e4nv", True, "QGMMA", "paged_attention fp8 pages, fp8 Q.K^T + fp16 P.V, d128",
              F16_DOTS=True),
        _attn(90, "bf16", "bf16", False, "HGMMA", "paged_attention bf16, d128"),
        _attn(90, "bf16", "bf16", False, "HGMMA", "paged_attention bf16, TMA page tiles, d128", TMA_KV=True),
        _attn(90, "bf16", "bf16", False, "HGMMA", "paged_attention bf16, last page in the loop, d128",
              PEEL_LAST=False),
        _attn(90, "bf16", "fp8e4nv", True, "QGMMA", "paged_attention fp8 K + bf16 V pages, FP8-Q, d128", v="bf16",
              V16=True),
        _attn(90, "bf16", "bf16", False, "HGMMA", "paged_attention bf16, 60-token page tiles, OVERLAP, d128",
              page=60, stages=3, BLOCK_N=64, PAGE_TILES=True, OVERLAP=True),
        _attn(90, "bf16", "fp8e4nv", True, "QGMMA", "paged_attention fp8 K + bf16 V pages, FP8-Q, 60-token "
              "page tiles, OVERLAP, d128", v="bf16", page=60, stages=3, BLOCK_N=64, PAGE_TILES=True, OVERLAP=True,
              V16=True),
        _attn(87, "fp16", "fp16", False, "HMMA", "paged_attention fp16, d128 (Orin)"),
        _attn(87, "bf16", "bf16", False, "HMMA", "paged_attention bf16, d64 (Orin)", d=64),
        Spec("csrc_triton.paged_attention", "_paged_attn_combine_kernel", comb,
             dict(HEAD_DIM=128, BLOCK_S=8, FIX_ROUND=False), 90, None, "split-KV combine"),
        Spec("csrc_triton.fp8_linear", "_fp8_linear_kernel", lin_ptr, lin_ce, 90, "QGMMA",
             "fp8_linear per-channel + bias + GELU", num_warps=8, num_stages=3),
        Spec("csrc_triton.fp8_linear", "_fp8_linear_kernel", lin_ptr,
             {**lin_ce, "BLOCK_SCALE": True, "GELU": False, "RESIDUAL": True}, 90, "QGMMA",
             "fp8_linear 1x128 blocks + gated residual", num_warps=8, num_stages=3),
        Spec("csrc_triton.fp8_linear", "_fp8_linear_kernel", {**lin_ptr, "x_ptr": "bf16"},
             {**lin_ce, "GELU": False, "RESIDUAL": True, "QUANT_X": True}, 90, "QGMMA",
             "fp8_linear bf16 input quantized in-kernel + gated residual", num_warps=8, num_stages=3),
        Spec("csrc_triton.fp8_linear", "_quantize_rows_kernel", {"x_ptr": "bf16", "q_ptr": "fp8e4nv", "s_ptr": "fp32"},
             dict(BLOCK_K=16384, FIX_ROUND=False), 90, None, "quantize rows -> fp8, K 13824", num_warps=8),
        Spec("csrc_triton.norm_modulate", "_norm_modulate_kernel", nm_ptr,
             dict(BLOCK_C=8192, RMS=False, FP8_OUT=True, FIX_ROUND=False), 90, None, "norm_modulate -> fp8, C 5120",
             num_warps=8),
        Spec("csrc_triton.norm_modulate", "_norm_modulate_kernel", {**nm_ptr, "y_ptr": "fp16"},
             dict(BLOCK_C=2048, RMS=True, FP8_OUT=False, FIX_ROUND=False), 87, None, "norm_modulate fp16 (Orin)"),
        Spec("csrc_triton.cache_write", "_cache_write_kernel", cw,
             dict(PAGE_SIZE=120, BLOCK_T=128, HALF_D=64, ROPE=True, FP8=True, FIX_ROUND=False, SHIFT=True,
                  QK_NORM=True), 90, None, "cache_write q/k RMSNorm + RoPE + K smoothing + fp8", num_warps=8),
        Spec("csrc_triton.cache_write", "_cache_write_kernel", {**cw, "kp_ptr": "fp16", "vp_ptr": "fp16", "q_ptr": "fp16", "qo_ptr": "fp16"},
             dict(PAGE_SIZE=120, BLOCK_T=128, HALF_D=64, ROPE=True, FP8=False, FIX_ROUND=False, SHIFT=False,
                  QK_NORM=False), 87,
             None, "cache_write RoPE fp16 (Orin)", num_warps=8),
    ]
    ca = {n: "bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "qw_ptr", "kw_ptr", "o_ptr")}
    ca_ce = dict(HEAD_DIM=128, BLOCK_M=64, BLOCK_N=64, Q_NORM=True, K_NORM=False, IEEE=False, FIX_ROUND=False)
    out += [
        Spec("csrc_triton.cross_attention", "_cross_attn_kernel", ca, ca_ce, 90, "HGMMA",
             "cross_attention text, q norm, d128", num_warps=8),
        Spec("csrc_triton.cross_attention", "_cross_attn_kernel", ca, {**ca_ce, "BLOCK_N": 16, "K_NORM": True}, 90,
             "HGMMA", "cross_attention audio window, q+k norms, d128", num_warps=8),
        Spec("csrc_triton.cross_attention", "_cross_attn_kernel", {n: "fp16" for n in ca}, ca_ce, 87, "HMMA",
             "cross_attention fp16, d128 (Orin)", num_warps=8),
    ]
    cao = {n: "bf16" for n in ("q_ptr", "k_ptr", "vo_ptr", "qw_ptr", "kw_ptr", "bias_ptr", "res_ptr", "o_ptr", "p_ptr")}
    cao_ce = dict(HEAD_DIM=128, BLOCK_M=64, BLOCK_N=16, BLOCK_C=128, Q_NORM=True, K_NORM=False, HAS_BIAS=True,
                  IEEE=False, FIX_ROUND=False)
    out += [
        Spec("csrc_triton.cross_attention", "_cross_attn_out_kernel", cao, cao_ce, 90, "HGMMA",
             "cross_attention + absorbed o + residual, text, d128", num_warps=8),
        Spec("csrc_triton.cross_attention", "_cross_attn_out_kernel", cao, {**cao_ce, "K_NORM": True}, 90, "HGMMA",
             "cross_attention + absorbed o + residual, audio window, d128", num_warps=8),
        Spec("csrc_triton.cross_attention", "_cross_attn_out_kernel",
             {**cao, "shift_ptr": "fp32", "scale_ptr": "fp32", "y8_ptr": "fp8e4nv", "ys_ptr": "fp32"},
             {**cao_ce, "K_NORM": True, "NORM_OUT": True}, 90, "HGMMA",
             "cross_attention + absorbed o + residual + next LayerNorm -> fp8, audio, d128", num_warps=8),
        Spec("csrc_triton.cross_attention", "_cross_attn_out_kernel",
             {**cao, "shift_ptr": "fp32", "scale_ptr": "fp32", "y8_ptr": "fp8e4nv", "ys_ptr": "fp32"},
             {**cao_ce, "K_NORM": True, "NORM_OUT": True, "GUIDED": True}, 90, "HGMMA",
             "cross_attention_out guided (two streams) + next LayerNorm, audio, d128", num_warps=8),
    ]
    from csrc_triton.fp8_linear import FP8_LINEAR_CONFIGS

    for i, c in enumerate(FP8_LINEAR_CONFIGS):                 # every tile the GPU autotuner may pick
        tile = {k: v for k, v in c.items() if k.isupper()}
        for block, quant_x in ((True, False), (True, True), (False, False), (False, True)):
            # weight scales per 1x128 block / per channel (FAST_ACCUM as the tile says);
            # e4m3 input / bf16 quantized in-kernel
            kind = ("block scales" if block else "per-channel") + (", bf16 x" if quant_x else "")
            out.append(Spec("csrc_triton.fp8_linear", "_fp8_linear_kernel",
                            {**lin_ptr, "x_ptr": "bf16"} if quant_x else lin_ptr,
                            {**lin_ce, **tile, "BLOCK_SCALE": block, "RESIDUAL": True, "QUANT_X": quant_x}, 90,
                            "QGMMA", f"fp8_linear autotune cfg {i} ({kind})",
                            num_warps=c["num_warps"], num_stages=c["num_stages"]))
    return out


def resource_usage(cubin: bytes) -> dict:
    """REG / SHARED / LOCAL / STACK per kernel, from ``cuobjdump --dump-resource-usage``. LOCAL reads 0
    for these cubins even when registers spill: spills show as the STACK frame (and STL/LDL in the
    SASS), which is what the checks read."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        txt = subprocess.run([cuobjdump(), "--dump-resource-usage", f.name], check=True,
                             capture_output=True, text=True).stdout
    return {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", txt)}


def check_all(selected=None) -> list[dict]:
    rows = []
    for spec in specs():
        if selected and selected not in spec.module:
            continue
        t0 = time.perf_counter()
        k = compile_spec(spec)
        sass = sass_of(k.asm["cubin"])
        mma = collections.Counter(MMA_RE.findall(sass))
        ok = (spec.expect is None and not mma) or (spec.expect is not None and mma[spec.expect] > 0)
        rows.append(dict(label=spec.label, kernel=k.metadata.name, arch=f"sm_{spec.arch}{'a' if spec.arch >= 90 else ''}",
                         num_warps=k.metadata.num_warps, shared=k.metadata.shared, mma=dict(mma),
                         resources=resource_usage(k.asm["cubin"]), local_stores=len(STL_RE.findall(sass)),
                         tma_loads=len(re.findall(r"\bUTMALDG\b", sass)),
                         scalar_converts=len(F2F_RE.findall(sass)), exp_in_flight=exp_in_flight(sass),
                         wgmma=dict(zip(("total", "waited_alone"), wgmma_waited(sass))),
                         loop_instructions=loop_sizes(sass),
                         expect=spec.expect, ok=ok, compile_s=round(time.perf_counter() - t0, 2)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--op", default=None, help="only kernels of this op (e.g. paged_attention)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET to compile for a GPU target", file=sys.stderr)
        return 2
    rows = check_all(args.op)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{'ok ' if r['ok'] else 'BAD'} {r['arch']:8s} {r['label']:45s} warps={r['num_warps']} "
                  f"smem={r['shared']:6d} regs={r['resources'].get('reg')} stack={r['resources'].get('stack')} "
                  f"mma={r['mma']} loop={r['loop_instructions'][:1]} ({r['compile_s']} s)")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
