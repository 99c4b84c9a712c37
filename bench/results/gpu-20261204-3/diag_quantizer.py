"""GPU diagnosis: (1) the row quantizer vs torch's quantize_fp8_rows, bit for bit, localized to the
division or the e4m3 convert, with a software-rounded candidate; (2) fp8_linear FAST_ACCUM on/off
at lpm-17b ffn-up against the calibrated bound of the GPU test."""
import json, os, sys
import torch, triton, triton.language as tl
sys.path.insert(0, os.getcwd())
from lpm_rt import ops
from lpm_rt.config import preset
from lpm_rt.ops import quantize_fp8_rows, quantize_fp8_weight, fp8_linear, fp8_linear_ref
from lpm_rt.ops.fp8_linear import _quantize_rows_triton
from csrc_triton._fp import rne_mantissa
from csrc_triton.fp8_linear import _fp8_linear_kernel
from lpm_rt.ops._launch import override_tiles

R = {}
def out(k, v):
    R[k] = v; print(k, v, flush=True)

@triton.jit
def div_kernel(x_ptr, s_ptr, o_ptr, K, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64); offs = tl.arange(0, BLOCK); m = offs < K
    x = tl.load(x_ptr + row * K + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), 0), 448.0), 1e-12)
    tl.store(s_ptr + row, s)
    tl.store(o_ptr + row * K + offs, tl.minimum(tl.maximum(tl.math.div_rn(x, s), -448.0), 448.0), mask=m)

@triton.jit
def cast_kernel(v_ptr, q_ptr, N, SOFT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK); m = offs < N
    v = tl.load(v_ptr + offs, mask=m, other=0.0)
    if SOFT:
        a = tl.abs(v)
        r = tl.where(a < 0.015625, (a + 16384.0) - 16384.0, rne_mantissa(a, 20))
        v = tl.where(v < 0, -r, r)
    tl.store(q_ptr + offs, v.to(tl.float8e4nv), mask=m)

dev = "cuda" if torch.cuda.is_available() else "cpu"
SM = dev == "cpu"
torch.manual_seed(0)
m = preset("lpm-17b").model
g = torch.Generator().manual_seed(0)
x = torch.nn.functional.gelu(torch.randn(1, 8 if SM else 6 * 1560, 256 if SM else m.ffn_dim, generator=g), approximate="tanh").to(dev).bfloat16()
x2 = x.reshape(-1, x.shape[-1])
M, K = x2.shape
qt, st = _quantize_rows_triton(x2)
qr, sr = quantize_fp8_rows(x2)
out("scale_mismatch", int((st != sr).sum()))
cm = qt.view(torch.uint8) != qr.view(torch.uint8)
out("code_mismatch", int(cm.sum()))
if cm.any():
    idx = cm.nonzero()[:6]
    ex = []
    for i, j in idx.tolist():
        v = float(x2[i, j]) / float(sr[i])
        ex.append(dict(x=float(x2[i, j]), s=float(sr[i]), v=v, triton=float(qt[i, j].float()), torch=float(qr[i, j].float())))
    out("code_examples", ex)
# localize: division
vo = torch.empty(M, K, device=dev); so = torch.empty(M, device=dev)
div_kernel[(M,)](x2, so, vo, K, BLOCK=triton.next_power_of_2(K))
vr = (x2.float() / sr[:, None]).clamp(-448, 448)
out("div_scale_mismatch", int((so != sr).sum()))
out("div_value_mismatch", int((vo != vr).sum()))
# localize: convert, on torch's own fp32 values
flat = vr.reshape(-1).contiguous(); N = flat.numel()
for soft in (False, True):
    q = torch.empty(N, dtype=torch.float8_e4m3fn, device=dev)
    cast_kernel[(triton.cdiv(N, 4096),)](flat, q, N, SOFT=soft, BLOCK=4096)
    tq = flat.to(torch.float8_e4m3fn)
    mm = q.view(torch.uint8) != tq.view(torch.uint8)
    out(f"cast_mismatch_soft{int(soft)}", int(mm.sum()))
    if mm.any():
        sel = mm.nonzero()[:6, 0]
        out(f"cast_examples_soft{int(soft)}", [dict(v=float(flat[i]), triton=float(q[i].float()), torch=float(tq[i].float()),
                                                 via_fp16=float(flat[i].half().to(torch.float8_e4m3fn).float())) for i in sel.tolist()])
    if not soft:
        dbl = flat.half().to(torch.float8_e4m3fn)
        out("triton_equals_fp32_to_fp16_to_e4m3", bool(torch.equal(q.view(torch.uint8), dbl.view(torch.uint8))))
# random fp32 values over the whole e4m3 range incl. subnormals
NR = 1 << (12 if SM else 22)
rv = (torch.randn(NR, device=dev) * torch.exp2(torch.randint(-12, 8, (NR,), device=dev).float())).clamp(-448, 448)
for soft in (False, True):
    q = torch.empty_like(rv, dtype=torch.float8_e4m3fn)
    cast_kernel[(triton.cdiv(rv.numel(), 4096),)](rv, q, rv.numel(), SOFT=soft, BLOCK=4096)
    out(f"random_cast_mismatch_soft{int(soft)}", int((q.view(torch.uint8) != rv.to(torch.float8_e4m3fn).view(torch.uint8)).sum()))

# (2) FAST_ACCUM at lpm-17b ffn-up (the GPU test's data)
g = torch.Generator().manual_seed(0)
m = m if not SM else type("M", (), dict(dim=256, ffn_dim=384))()
x = torch.randn(1, 8 if SM else 6 * 1560, m.dim, generator=g).to(dev).bfloat16()
w = (torch.randn(m.ffn_dim, m.dim, generator=g) * m.dim ** -0.5).to(dev).bfloat16()
bias = torch.randn(m.ffn_dim, generator=g).to(dev).bfloat16()
x8, xs = quantize_fp8_rows(x); w8, ws = quantize_fp8_weight(w, None)
ref = fp8_linear_ref(x8, xs, w8, ws, bias, act="gelu_tanh", out_dtype=torch.float32).double()
low = fp8_linear_ref(x8, xs, w8, ws, bias, act="gelu_tanh", out_dtype=torch.bfloat16).double()
bound = 2 * (low - ref).abs().max().item() + 1e-3
out("ffn_up_bound", bound)
out("ffn_up_low_rel_l2", ((low - ref).norm() / ref.norm()).item())
ops.set_backend("triton")
for fast in (True, False):
    for bm, bn, wp, stg in ((128, 128, 8, 3), (128, 128, 8, 4)):
        with override_tiles(_fp8_linear_kernel, dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, GROUP_M=8, FAST_ACCUM=fast, TMA=False), wp, stg):
            y = fp8_linear(x8, xs, w8, ws, bias, act="gelu_tanh").double()
            ms = 0 if SM else triton.testing.do_bench(lambda: fp8_linear(x8, xs, w8, ws, bias, act="gelu_tanh"), warmup=10, rep=40)
        e = (y - ref).abs()
        out(f"ffn_up_fast{int(fast)}_{bm}x{bn}s{stg}", dict(max_err=e.max().item(), rel_l2=((y - ref).norm() / ref.norm()).item(),
            mean_err=e.mean().item(), ms=ms))
y = fp8_linear(x8, xs, w8, ws, bias, act="gelu_tanh").double()
out("ffn_up_autotuned_max_err", (y - ref).abs().max().item())
json.dump(R, open(os.path.join(os.environ.get("OUT", "."), "diag.json"), "w"), indent=1)
