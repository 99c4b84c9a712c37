"""Kernel specializations an artifact needs, and their ahead-of-time compile to cubins.

:data:`KERNELS` is the table: one :class:`KernelEntry` per ``@triton.jit`` kernel of
``csrc_triton`` (module, function, and a ``variants(ctx)`` rule deriving the specializations
from the model + stream config and the target). Adding a kernel to artifacts = adding one entry.
``discover()`` lists every ``*_kernel`` in csrc_triton so kernels without an entry are reported,
never silently missing.

A specialization fixes pointer dtypes, constexprs (tile sizes from the target's frozen table
in ``targets.py``, clamped to the problem) and compile hints. Hints are derived from the tensor
layouts the runtime uses for this config: an integer that is 1 (an innermost stride) becomes a
constexpr 1, a multiple of 16 is declared ``tt.divisibility=16``, pointers are declared 16-byte
aligned. The manifest records every hint and the runtime launcher (``lpm_rt.artifact.CubinKernel
.pack``) enforces them at launch, so a cubin is never launched outside its compiled contract.

Compiles with ``triton.compile(ASTSource(fn, signature, constexprs, attrs),
target=GPUTarget("cuda", sm, 32))``: no GPU is needed; ptxas ships in the triton wheel.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import triton

from .targets import KERNEL_TABLES, Target, WeightFormat

__all__ = ["KernelEntry", "Variant", "BuildContext", "KERNELS", "discover", "enumerate_variants",
           "compile_variant"]

_TRITON_DT = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8e4nv", "fp8k": "fp8e4nv"}   # (fp8k: K's)
_TORCH_DT = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "float8_e4m3fn",
             "fp8k": "float8_e4m3fn"}   # torch.<name>


@dataclass(frozen=True)
class BuildContext:
    cfg: object                  # LPMConfig
    target: Target
    weight_formats: frozenset    # WeightFormat values actually used by the quantized linears


@dataclass
class Variant:
    name: str                    # unique, file-safe: kernels/<name>.cubin
    entry: "KernelEntry"
    pointers: dict               # param name -> triton element type ("bf16", "fp8e4nv", "i32", ...)
    constexprs: dict
    ints: dict                   # param name -> the value this config's tensors give (hint source)
    num_warps: int
    num_stages: int
    floats: tuple = ()
    role: str = ""               # what it runs (for the SASS check: "attention", "linear", ...)


@dataclass(frozen=True)
class KernelEntry:
    family: str                  # key into the target's kernel table
    module: str
    function: str
    variants: Callable = field(compare=False)

    def fn(self):
        return getattr(importlib.import_module(self.module), self.function, None)


def _strides(names, shape) -> dict:
    """Contiguous strides of ``shape`` under ``names`` (outermost first)."""
    out, acc = {}, 1
    for n, s in zip(reversed(names), reversed(shape)):
        out[n] = acc
        acc *= s
    return out


def _clamp(block: int, n: int, lo: int = 16) -> int:
    return max(lo, min(block, triton.next_power_of_2(max(n, 1))))


# ---------------------------------------------------------------- table entries
def _attention_variants(ctx: BuildContext) -> list:
    import torch

    from lpm_rt.ops.paged_attention import f16_dots, page_tiles_fit

    cfg, tgt = ctx.cfg, ctx.target
    m, s = cfg.model, cfg.stream
    H, D, ps = m.num_heads, m.head_dim, s.page_size
    act, kv = _TRITON_DT[tgt.act_dtype], _TRITON_DT[tgt.kv_dtype]
    kv_fp8 = tgt.kv_dtype in ("fp8", "fp8k")
    v16 = tgt.kv_dtype == "fp8k"                  # e4m3 K pages, V pages in the activations' dtype
    lq = s.chunk_frames * s.tokens_per_frame
    table = KERNEL_TABLES[tgt.name]
    kc = table["paged_attention" if lq >= 128 else "paged_attention_small"]
    bm, bn = _clamp(kc.tiles["BLOCK_M"], lq), kc.tiles["BLOCK_N"]
    out = []
    for net, window in (("backbone", s.history_frames), ("refiner", 0)):
        max_pages = (s.reference_slots + window + s.chunk_frames) * s.pages_per_frame
        P = max_pages * cfg.runtime.max_sessions
        ints = dict(Lq=lq, H=H, kv_per_split=None, **_strides(("stride_qb", "stride_ql", "stride_qh", "stride_qd"), (1, lq, H, D)),
                    **_strides(("stride_kp", "stride_ks", "stride_kh", "stride_kd"), (P, ps, H, D)),
                    **_strides(("stride_vp", "stride_vs", "stride_vh", "stride_vd"), (P, ps, H, D)),
                    **(_strides(("stride_ksp", "stride_ksh"), (P, H)) if kv_fp8 else dict(stride_ksp=1, stride_ksh=1)),
                    **(_strides(("stride_vsp", "stride_vsh"), (P, H)) if kv_fp8 and not v16
                       else dict(stride_vsp=1, stride_vsh=1)),
                    **_strides(("stride_tb", "stride_tp"), (1, max_pages)))
        # whole-grid launches (no split-KV) when the query tiles fill the GPU
        split = -(-lq // bm) * H < tgt.num_sms
        if split:
            ints.update(_strides(("stride_ob", "stride_os", "stride_ol", "stride_oh", "stride_od"), (1, 1, lq, H, D)),
                        **_strides(("stride_lb", "stride_ls", "stride_ll", "stride_lh"), (1, 1, lq, H)))
            ints.update(stride_os=None, stride_ls=None)       # split count is a launch-time choice
        else:
            ints.update(stride_ob=lq * H * D, stride_os=0, stride_ol=H * D, stride_oh=D, stride_od=1,
                        stride_lb=0, stride_ls=0, stride_ll=0, stride_lh=0)
        ce = dict(PAGE_SIZE=ps, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, KV_FP8=kv_fp8,
                  # the launcher's default (lpm_rt.ops.paged_attention): fp8_q off for fp8 K and V
                  # unless the table asks, on for fp8k (the form's point); fp8 dots need sm_89+, K >= 32
                  FP8_Q=(v16 or bool(kc.tiles.get("FP8_Q", False))) and kv_fp8 and tgt.sm >= 89 and D >= 32,
                  SPLIT=split, IEEE=False, FIX_ROUND=False,
                  PAGE_TILES=bool(kc.tiles.get("PAGE_TILES", False)) and page_tiles_fit(bn, ps),
                  V_TRANS_LOAD=False, V16=v16)
        # fp8 pages under bf16 activations: fp16 dots, as the launcher picks (F16_DOTS), unless the table says
        vt = getattr(torch, _TORCH_DT[tgt.act_dtype if v16 else tgt.kv_dtype])
        ce["F16_DOTS"] = bool(kc.tiles.get("F16_DOTS", True)) and f16_dots(
            getattr(torch, _TORCH_DT[tgt.act_dtype]), getattr(torch, _TORCH_DT[tgt.kv_dtype]), vt)
        # the range's last key block before the loop, as the launcher does, unless the table says
        ce["PEEL_LAST"] = bool(kc.tiles.get("PEEL_LAST", True))
        ptr = dict(q_ptr=act, k_ptr=kv, v_ptr=act if v16 else kv, ks_ptr="fp32", vs_ptr="fp32", table_ptr="i32",
                   lens_ptr="i32", o_ptr="fp32" if split else act, lse_ptr="fp32")
        out.append(Variant(f"paged_attention_{net}_{tgt.arch}_{act}_{kv}_d{D}_ps{ps}", KERNELS_BY_FN[
            "_paged_attn_fwd_kernel"], ptr, ce, ints, kc.num_warps, kc.num_stages, ("qk_scale",), "attention"))
        if split and not any(v.entry.function == "_paged_attn_combine_kernel" for v in out):
            cc = table["paged_attention_combine"]
            out.append(Variant(f"paged_attention_combine_{tgt.arch}_{act}_d{D}", KERNELS_BY_FN["_paged_attn_combine_kernel"],
                               dict(part_ptr="fp32", lse_ptr="fp32", o_ptr=act),
                               dict(HEAD_DIM=D, BLOCK_S=cc.tiles["BLOCK_S"], FIX_ROUND=False),
                               dict(H=H, stride_pd=1, stride_lh=1, stride_od=1, stride_oh=D, stride_ol=H * D),
                               cc.num_warps, cc.num_stages, (), "combine"))
    return out


def _attention_combine_variants(ctx):
    return []      # emitted together with the split-KV attention variant that needs it


def _linear_variants(ctx: BuildContext) -> list:
    """One specialization per (weight-scale layout, epilogue, input form) the DiT block linears
    use on fp8 targets. e4m3 input from norm_modulate: q|k|v and the cross-attention q (bias),
    ffn up (bias + GELU). bf16 input quantized per token: o of every attention and ffn down
    (bias + gated residual), k/v of the audio and text tokens (bias) -- inside the GEMM, or by the
    row-quantization kernel first and then the e4m3 GEMM, as ``quantize_separately`` picks for
    the GEMM's N (the launcher's rule)."""
    tgt, m = ctx.target, ctx.cfg.model
    fp8 = {f for f in ctx.weight_formats if f.startswith("fp8")}
    if not fp8:
        return []
    from lpm_rt.ops.fp8_linear import quantize_separately

    kc = KERNEL_TABLES[tgt.name]["fp8_linear"]
    act = _TRITON_DT[tgt.act_dtype]
    out, quant_k = [], set()
    for fmt in sorted(fp8):
        block = fmt == WeightFormat.FP8_BLOCK.value
        for epi, (gelu, residual, quant_x, K, N) in dict(
                qkv=(False, False, False, m.dim, 3 * m.dim), o=(False, True, True, m.dim, m.dim),
                ffn_up=(True, False, False, m.dim, m.ffn_dim), ffn_down=(False, True, True, m.ffn_dim, m.dim),
                kv=(False, False, True, m.audio_dim, 2 * m.dim)).items():
            if quant_x and quantize_separately(N):
                # the text k|v take the model width, the audio k|v the audio width
                quant_k |= {K, m.dim} if epi == "kv" else {K}
                quant_x = False
            bk = 128      # the kernel promotes fp8 partial sums every 128 products (and 1x128 scale blocks)
            ce = dict(BLOCK_M=kc.tiles["BLOCK_M"], BLOCK_N=_clamp(kc.tiles["BLOCK_N"], N), BLOCK_K=bk,
                      GROUP_M=8, BLOCK_SCALE=block, HAS_BIAS=True, GELU=gelu, RESIDUAL=residual, FIX_ROUND=False,
                      QUANT_X=quant_x, FAST_ACCUM=bool(kc.tiles.get("FAST_ACCUM", False)), TMA=False)
            ints = dict(N=N, K=K, stride_xm=K, stride_xk=1, stride_wn=K, stride_wk=1,
                        stride_wsn=(K // 128) if block else 1, stride_wsk=1, stride_rn=1, stride_gn=1,
                        stride_om=N, stride_on=1)
            # gates are the fp32 adaLN vectors; without the residual epilogue both pointers are
            # the launcher's fp32 placeholder
            ptr = dict(x_ptr=act if quant_x else "fp8e4nv", w_ptr="fp8e4nv", xs_ptr="fp32", ws_ptr="fp32",
                       bias_ptr=act, res_ptr=act if residual else "fp32", gate_ptr="fp32", out_ptr=act)
            tag = "b128" if block else "ch"
            out.append(Variant(f"fp8_linear_{epi}_{tag}_{tgt.arch}_k{K}_n{N}", KERNELS_BY_FN["_fp8_linear_kernel"],
                               ptr, ce, ints, kc.num_warps, kc.num_stages, (), "linear"))
    for bk in sorted({triton.next_power_of_2(k) for k in quant_k}):
        out.append(Variant(f"quantize_rows_{tgt.arch}_{act}_k{bk}", KERNELS_BY_FN["_quantize_rows_kernel"],
                           dict(x_ptr=act, q_ptr="fp8e4nv", s_ptr="fp32"), dict(BLOCK_K=bk, FIX_ROUND=False),
                           dict(stride_xk=1, stride_qk=1), 8 if bk >= 4096 else 4, 1, (), "quantize"))
    return out


def _quantize_variants(ctx):
    return []      # emitted together with the fp8 linears whose bf16 input it quantizes


def _norm_modulate_variants(ctx: BuildContext) -> list:
    tgt, m = ctx.target, ctx.cfg.model
    kc = KERNEL_TABLES[tgt.name]["norm_modulate"]
    act = _TRITON_DT[tgt.act_dtype]
    fp8_out = any(f.startswith("fp8") for f in ctx.weight_formats)     # feeds fp8_linear directly
    ptr = dict(x_ptr=act, shift_ptr="fp32", scale_ptr="fp32", y_ptr="fp8e4nv" if fp8_out else act, ys_ptr="fp32")
    ce = dict(BLOCK_C=triton.next_power_of_2(m.dim), RMS=False, FP8_OUT=fp8_out, FIX_ROUND=False)
    ints = dict(C=m.dim, stride_xc=1, stride_hc=1, stride_sc=1, stride_yc=1, stride_xl=m.dim, stride_yl=m.dim,
                stride_ql=1)
    from lpm_rt.ops.norm_modulate import launch_warps

    return [Variant(f"norm_modulate_{tgt.arch}_{act}{'_fp8out' if fp8_out else ''}_c{m.dim}",
                    KERNELS_BY_FN["_norm_modulate_kernel"], ptr, ce, ints, kc.num_warps or launch_warps(m.dim),
                    kc.num_stages, ("eps",), "norm")]


def _cache_write_variants(ctx: BuildContext) -> list:
    tgt, m, s = ctx.target, ctx.cfg.model, ctx.cfg.stream
    kc = KERNEL_TABLES[tgt.name]["cache_write"]
    act, kv = _TRITON_DT[tgt.act_dtype], _TRITON_DT[tgt.kv_dtype]
    H, D, ps = m.num_heads, m.head_dim, s.page_size
    v16 = tgt.kv_dtype == "fp8k"                                    # V pages in the activations' dtype
    ptr = dict(k_ptr=act, v_ptr=act, cos_ptr="fp32", sin_ptr="fp32", slot_ptr="i64", kp_ptr=kv,
               vp_ptr=act if v16 else kv, ks_ptr="fp32", vs_ptr="fp32", q_ptr=act, qo_ptr=act, shift_ptr="fp32",
               qw_ptr=act, kw_ptr=act)
    fp8 = tgt.kv_dtype in ("fp8", "fp8k")                           # K smoothing rides on fp8 K pages
    fp8_form = any(f.startswith("fp8") for f in ctx.weight_formats)  # its q/k RMSNorms run here
    ce = dict(PAGE_SIZE=ps, BLOCK_T=triton.next_power_of_2(ps), HALF_D=D // 2, ROPE=True,
              FP8=fp8, FIX_ROUND=False, SHIFT=fp8, QK_NORM=fp8_form, V16=v16)
    ints = dict(**{f"stride_{x}d": 1 for x in ("k", "v", "q", "qo", "kp", "vp", "sh")}, stride_shh=D,
                stride_cd=1, stride_sd=1,
                **{f"stride_{x}h": D for x in ("k", "v", "q", "qo", "kp", "vp")},
                stride_kps=H * D, stride_vps=H * D, stride_qos=H * D, stride_ksh=1, stride_vsh=1,
                stride_cn=D // 2, stride_sn=D // 2)
    # per chunk: RoPE fused, q rotated in the same launch; once per session, the reference
    # prefill writes keys it rotated itself (cos/sin are the launcher's 1x1 placeholder)
    ints["H"] = H
    prefill = dict(ints, stride_cn=1, stride_sn=1)
    from lpm_rt.ops.cache_write import launch_warps

    warps = kc.num_warps or launch_warps(ps, D // 2)
    return [Variant(f"cache_write_{tgt.arch}_{act}_{kv}_d{D}_ps{ps}", KERNELS_BY_FN["_cache_write_kernel"],
                    ptr, ce, ints, warps, kc.num_stages, ("eps",), "cache"),
            Variant(f"cache_write_prefill_{tgt.arch}_{act}_{kv}_d{D}_ps{ps}", KERNELS_BY_FN["_cache_write_kernel"],
                    ptr, dict(ce, ROPE=False, QK_NORM=False), prefill, warps, kc.num_stages, ("eps",), "cache")]


def _cross_attention_variants(ctx: BuildContext) -> list:
    """Text attention (q norm fused; the session's keys are normed once) over the chunk's tokens,
    and the frame-local audio attention (q and k norms fused; the window fits one key tile)."""
    from lpm_rt.ops.cross_attention import LAUNCH_STAGES, key_tile, launch_warps

    tgt, m, s = ctx.target, ctx.cfg.model, ctx.cfg.stream
    kc = KERNEL_TABLES[tgt.name]["cross_attention"]
    act = _TRITON_DT[tgt.act_dtype]
    H, D, C = m.num_heads, m.head_dim, m.dim
    ka = (m.audio_context + 1) * m.audio_tokens_per_frame
    ptr = dict(q_ptr=act, k_ptr=act, v_ptr=act, qw_ptr=act, kw_ptr=act, o_ptr=act)
    out = []
    # the text's key count is the session's (a few tags, up to text_len): one text kernel per key
    # tile the launcher can pick, up to the table's; the audio window is fixed by the config
    text_tiles = sorted({min(key_tile(n, False), kc.tiles["BLOCK_N"]) for n in (1, 17, 33, m.text_len)})
    for kind, lq, k_norm, bn, kl in [("text", s.chunk_frames * s.tokens_per_frame, False, bn, C) for bn in text_tiles] \
            + [("audio", s.tokens_per_frame, True, key_tile(ka, True), 2 * C)]:
        ce = dict(HEAD_DIM=D, BLOCK_M=_clamp(kc.tiles["BLOCK_M"], lq), BLOCK_N=bn, Q_NORM=True, K_NORM=k_norm,
                  IEEE=tgt.act_dtype == "fp32", FIX_ROUND=False)
        ints = dict(Lq=lq, H=H, stride_qd=1, stride_qh=D, stride_ql=C, stride_kd=1, stride_kh=D, stride_kl=kl,
                    stride_vd=1, stride_vh=D, stride_vl=kl, stride_od=1, stride_oh=D, stride_ol=C)
        # 8 warps above d64 (a 64-row d128 tile on 4 warps spills: sass 104 B) unless the table says
        warps, stages = kc.num_warps or launch_warps(D), kc.num_stages or LAUNCH_STAGES
        tag = f"{kind}_bn{bn}" if kind == "text" and len(text_tiles) > 1 else kind
        out.append(Variant(f"cross_attention_{tag}_{tgt.arch}_{act}_d{D}", KERNELS_BY_FN["_cross_attn_kernel"],
                           ptr, ce, ints, warps, stages, ("eps", "qk_scale"), "cross_attention"))
    return out


def _cross_attention_out_variants(ctx: BuildContext) -> list:
    """The fp8 block form's absorbed cross-attention (attention, output projection and residual in
    one kernel, the next norm fused): the audio window (plain and guided: silence's window and the
    chunk's back to back), and the text at each key tile a short prompt can take."""
    from lpm_rt.ops.cross_attention import ABSORB_MAX_KEYS, LAUNCH_STAGES, absorbs, key_tile, launch_warps, out_tile

    if not any(f.startswith("fp8") for f in ctx.weight_formats):
        return []                                  # the unquantized form keeps the projection's GEMM
    tgt, m, s = ctx.target, ctx.cfg.model, ctx.cfg.stream
    kc = KERNEL_TABLES[tgt.name]["cross_attention"]
    act = _TRITON_DT[tgt.act_dtype]
    H, D, C = m.num_heads, m.head_dim, m.dim
    ka = (m.audio_context + 1) * m.audio_tokens_per_frame
    ptr = dict(q_ptr=act, k_ptr=act, vo_ptr=act, qw_ptr=act, kw_ptr=act, bias_ptr=act, res_ptr=act, o_ptr=act,
               p_ptr=act)
    unused = dict(shift_ptr=act, scale_ptr=act, y8_ptr=act, ys_ptr=act)          # the launcher's placeholders
    fused = dict(shift_ptr="fp32", scale_ptr="fp32", y8_ptr="fp8e4nv", ys_ptr="fp32")
    text_tiles = sorted({key_tile(n, True) for n in (1, 17, 33, ABSORB_MAX_KEYS) if absorbs(n, D)})
    kinds = [("text", s.chunk_frames * s.tokens_per_frame, False, bn, C) for bn in text_tiles]
    if absorbs(ka, D):
        kinds.append(("audio", s.tokens_per_frame, True, key_tile(ka, True), 2 * C))
    if absorbs(2 * ka, D):                         # guided audio: silence's window and the chunk's, one tile
        kinds.append(("audio_guided", s.tokens_per_frame, True, key_tile(2 * ka, True), None))
    out = []
    # the text with the audio attention's LayerNorm fused and without (no audio); the audio always
    # with the FFN's adaLN
    for (kind, lq, k_norm, bn, kl), norm in [(k, n) for k in kinds for n in (True, False)
                                             if n or k[0] == "text"]:
        guided = kind == "audio_guided"
        ce = dict(HEAD_DIM=D, BLOCK_M=_clamp(kc.tiles["BLOCK_M"], lq), BLOCK_N=bn, BLOCK_C=out_tile(C), Q_NORM=True,
                  K_NORM=k_norm, HAS_BIAS=True, NORM_OUT=norm, GUIDED=guided, IEEE=tgt.act_dtype == "fp32",
                  FIX_ROUND=False)
        # key counts, and the batch strides that follow them, are the session's or the chunk's (the
        # guided streams, concatenated, have their own key strides)
        ints = dict(Lq=lq, Lk=None, H=H, N=C, split=None, stride_qb=None, stride_ql=C, stride_qh=D, stride_qd=1,
                    stride_kb=None, stride_kl=kl, stride_kh=D, stride_kd=1,
                    stride_vb=None, stride_vl=None if guided else C, stride_vh=None, stride_vn=1,
                    stride_rb=None, stride_rl=C, stride_rn=1, stride_ob=None, stride_ol=C, stride_on=1,
                    stride_pb=None, stride_pl=H * bn, stride_ph=bn,
                    stride_hb=None, stride_hn=1 if norm else None, stride_sb=None, stride_sn=1 if norm else None,
                    stride_yb=None, stride_yl=C if norm else None, stride_yn=1 if norm else None,
                    stride_zb=None, stride_zl=1 if norm else None)
        warps, stages = kc.num_warps or launch_warps(D), kc.num_stages or LAUNCH_STAGES
        tag = (f"{kind}_bn{bn}" if kind == "text" and len(text_tiles) > 1 else kind) + ("_norm" if norm else "")
        out.append(Variant(f"cross_attention_out_{tag}_{tgt.arch}_{act}_d{D}", KERNELS_BY_FN["_cross_attn_out_kernel"],
                           {**ptr, **(fused if norm else unused)}, ce, ints, warps, stages,
                           ("eps", "qk_scale", "norm_eps", "gain"), "cross_attention"))
    return out


KERNELS: tuple = (
    KernelEntry("paged_attention", "csrc_triton.paged_attention", "_paged_attn_fwd_kernel", _attention_variants),
    KernelEntry("paged_attention_combine", "csrc_triton.paged_attention", "_paged_attn_combine_kernel",
                _attention_combine_variants),
    KernelEntry("fp8_linear", "csrc_triton.fp8_linear", "_fp8_linear_kernel", _linear_variants),
    KernelEntry("fp8_quantize", "csrc_triton.fp8_linear", "_quantize_rows_kernel", _quantize_variants),
    KernelEntry("norm_modulate", "csrc_triton.norm_modulate", "_norm_modulate_kernel", _norm_modulate_variants),
    KernelEntry("cache_write", "csrc_triton.cache_write", "_cache_write_kernel", _cache_write_variants),
    KernelEntry("cross_attention", "csrc_triton.cross_attention", "_cross_attn_kernel", _cross_attention_variants),
    KernelEntry("cross_attention", "csrc_triton.cross_attention", "_cross_attn_out_kernel",
                _cross_attention_out_variants),
)
KERNELS_BY_FN = {e.function: e for e in KERNELS}


def discover() -> dict:
    """{function name: module} of every ``*_kernel`` jit function now in csrc_triton."""
    import csrc_triton

    found = {}
    for info in pkgutil.iter_modules(csrc_triton.__path__):
        mod = importlib.import_module(f"csrc_triton.{info.name}")
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "arg_names"):
                found[name] = mod.__name__
    return found


def enumerate_variants(ctx: BuildContext) -> tuple[list, list]:
    """-> (variants to compile, notes about kernels skipped and why)."""
    if ctx.target.sm is None:
        return [], []
    notes = []
    for name, mod in sorted(discover().items()):
        if name not in KERNELS_BY_FN:
            notes.append(f"{mod}.{name}: no entry in lpm_compile.kernels.KERNELS (not compiled)")
    out = []
    for entry in KERNELS:
        if entry.family not in KERNEL_TABLES[ctx.target.name]:
            continue                                   # e.g. fp8_linear on sm_87: the target has no FP8
        if entry.fn() is None:
            notes.append(f"{entry.module}.{entry.function}: not found in csrc_triton (skipped)")
            continue
        out += entry.variants(ctx)
    return out, notes


def signature_of(v: Variant) -> tuple[dict, dict, dict, list]:
    """-> (signature, constexprs, attrs, params) for ASTSource and the manifest. Raises ValueError
    when the kernel's constexprs and the table disagree (the kernel changed: update the entry)."""
    fn = v.entry.fn()
    declared = {p.name: p for p in fn.params}
    ce = {k: val for k, val in v.constexprs.items() if k in declared}
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in ce and p.default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{v.entry.function}: table entry lacks constexpr(s) {missing}")
    sig, attrs, params = {}, {}, []
    for i, name in enumerate(fn.arg_names):
        if name in ce or declared[name].is_constexpr:
            sig[name] = "constexpr"
            ce.setdefault(name, declared[name].default)
            continue
        val = v.ints.get(name)
        if name in v.pointers:
            sig[name] = "*" + v.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
            params.append(dict(name=name, type=sig[name], div16=True))
        elif name in v.floats:
            sig[name] = "fp32"
            params.append(dict(name=name, type="fp32", div16=False))
        elif val == 1 and name.startswith("stride_"):
            sig[name], ce[name] = "constexpr", 1
        else:
            sig[name] = "i32"
            div16 = bool(val) and val % 16 == 0
            if div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
            params.append(dict(name=name, type="i32", div16=div16))
    return sig, ce, attrs, params


def compile_variant(v: Variant, target: Target):
    """Compile one specialization -> (cubin bytes, manifest record without the file hash)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = v.entry.fn()
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError(f"{v.entry.function} is {type(fn).__name__}: unset TRITON_INTERPRET to compile kernels")
    sig, ce, attrs, params = signature_of(v)
    k = triton.compile(ASTSource(fn, signature=sig, constexprs=ce, attrs=attrs),
                       target=GPUTarget("cuda", target.sm, 32),
                       options=dict(num_warps=v.num_warps, num_stages=v.num_stages))
    md = k.metadata
    rec = dict(name=v.name, function=md.name, kernel=f"{v.entry.module}.{v.entry.function}", role=v.role,
               arch=target.arch, num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared,
               signature=sig, params=params, constexprs={n: (val if isinstance(val, (int, float, bool, str)) else str(val))
                                          for n, val in ce.items()},
               global_scratch=[md.global_scratch_size, md.global_scratch_align],
               profile_scratch=[md.profile_scratch_size, md.profile_scratch_align],
               triton_hash=md.hash)
    return k.asm["cubin"], rec
