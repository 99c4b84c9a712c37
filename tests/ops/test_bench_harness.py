"""The kernel benchmark harness (lpm_rt.benchmark.kernels) end to end on CPU at tiny shapes:
every provider of every op is wired and runs (Triton through the interpreter), rows carry the
fields the JSON promises, the work helpers count what they should, and ``main`` without a GPU
says so and exits 0. Timing itself is replaced by one call: there is nothing to time on a CPU."""

from __future__ import annotations

import pytest
import torch

from lpm_rt.benchmark import kernels as H

TINY = {
    "paged_attention": dict(label="tiny", B=1, M=5, Lq=5, kv=21, H=2, D=16, page_size=8),
    "fp8_linear": dict(label="tiny", B=1, M=5, K=128, N=24),
    "norm_modulate": dict(label="tiny", B=1, M=5, C=32),
    "cache_write": dict(label="tiny", B=1, M=16, N=16, H=2, D=16, page_size=8),
    "cross_attention": dict(label="tiny", B=2, M=5, Lq=5, kv=6, H=2, D=16, k_norm=True),
}


def test_work_helpers():
    sh = dict(B=1, H=40, Lq=1560, kv=24960, D=128)
    assert H.attention_flops(sh) == 4 * 40 * 1560 * 24960 * 128
    assert H.linear_flops(dict(M=9360, N=13824, K=5120)) == 2 * 9360 * 13824 * 5120
    assert H.attention_bytes(sh, 2, 1) == 40 * 128 * (2 * 1560 * 2 + 2 * 24960)


def test_production_shapes_are_labelled_480p():
    shapes = H.production_shapes("paged_attention")
    s17 = [s for s in shapes if s["label"] == "lpm-17b 480P chunk=6f"][0]
    assert (s17["Lq"], s17["kv"], s17["H"], s17["D"], s17["page_size"]) == (9360, 21 * 1560, 40, 128, 120)
    assert any(s["K"] == 5120 and s["N"] == 13824 and s["M"] == 9360 for s in H.production_shapes("fp8_linear"))


@pytest.mark.parametrize("op", H.OPS)
def test_every_provider_runs(op, monkeypatch):
    calls = []

    def one_call(fn, quick, graph=False):
        assert graph is False
        fn()
        calls.append(1)
        return dict(median_ms=1.0, p20_ms=0.9, p80_ms=1.2)

    monkeypatch.setattr(H, "_timed", one_call)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)          # inductor on CPU: too slow here
    rows = H.run_op(op, True, dict(bf16_tflops=1.0, fp8_tflops=2.0, copy_gbps=1.0), [TINY[op]], device="cpu")
    assert [r["provider"] for r in rows] == H.provider_names(op)
    for r in rows:
        if r["provider"].startswith(("ref", "triton")):
            assert "skipped" not in r, r
        if "skipped" not in r:
            assert r["median_ms"] == 1.0 and r["gbps"] > 0 and r["frac_peak"] > 0
            assert (r["tflops"] is not None and r["tflops"] > 0) == (op in ("paged_attention", "fp8_linear",
                                                                             "cross_attention"))
    assert len(calls) == sum("skipped" not in r for r in rows)
    assert H.lpm_ops().get_backend() == "ref"


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_gathered_sdpa_baseline_computes_paged_attention(kv_dtype):
    """The vendor-route provider (pages gathered, dequantized, then SDPA) is paged attention: it
    matches the reference on scrambled pages with a partial last page."""
    sh = dict(TINY["paged_attention"], Lq=4, kv=21)
    args = H.attention_inputs(sh, kv_dtype, "cpu")
    out = H._gathered_sdpa(*args, sh["kv"])
    ref = H.lpm_ops().paged_attention_ref(*args)
    assert out.shape == ref.shape
    assert (out.float() - ref.float()).abs().max() < 2e-2 * ref.float().abs().max()


def test_overlap_provider_runs_the_overlap_order_on_half_pages(triton_backend, monkeypatch):
    """triton-overlap: the same tokens in pages of half the size, launched with OVERLAP, and it
    computes the attention."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel

    from _checks import spy_constexprs

    sh = dict(TINY["paged_attention"], Lq=4, kv=21)
    fn = dict((name, f) for name, _, f in H.providers("paged_attention", sh, "cpu"))["triton-overlap"]
    (q, kp, vp, table, lens), _ = fn.inputs
    assert kp.shape[1] == sh["page_size"] // 2 and int(lens[0]) == sh["kv"]
    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    out = fn()
    assert launches and all(c["OVERLAP"] and c["PAGE_TILES"] for c in launches)
    ref = H.lpm_ops().paged_attention_ref(q, kp, vp, table, lens)
    assert (out.float() - ref.float()).abs().max() < 2e-2 * ref.float().abs().max()
    assert H.half_pages(dict(sh, page_size=120))["page_size"] == 60
    assert H.half_pages(dict(sh, page_size=256)) is None and H.half_pages(dict(sh, page_size=15)) is None


@pytest.mark.parametrize("provider", ["triton-fp8k", "triton-fp8k-overlap"])
def test_fp8k_providers_run_mixed_pages(triton_backend, monkeypatch, provider):
    """triton-fp8k(-overlap): fp8 K pages with scales beside bf16 V pages, launched as the mixed form
    with FP8-Q (the overlap one on half pages); it computes the attention. Its peak is the fp8/bf16
    time-weighted mix."""
    from csrc_triton.paged_attention import _paged_attn_fwd_kernel

    from _checks import spy_constexprs

    sh = dict(TINY["paged_attention"], Lq=4, kv=21)
    fn = dict((name, f) for name, _, f in H.providers("paged_attention", sh, "cpu"))[provider]
    (q, kp, vp, table, lens, ks, vs), kw = fn.inputs
    assert kp.dtype == torch.float8_e4m3fn and vp.dtype == torch.bfloat16 and ks is not None and vs is None
    assert kw == {"fp8_q": True}
    launches = spy_constexprs(monkeypatch, _paged_attn_fwd_kernel)
    out = fn()
    assert launches and all(c["V16"] and c["FP8_Q"] for c in launches)
    assert all(c.get("OVERLAP", False) for c in launches) == provider.endswith("overlap")
    ref = H.lpm_ops().paged_attention_ref(q, kp, vp, table, lens, ks, vs)
    assert (out.float() - ref.float()).abs().max() < 5e-2 * ref.float().abs().max()
    assert H._peak_for("fp8k", {"fp8_tflops": 1500.0, "bf16_tflops": 750.0}) == pytest.approx(1000.0)
    assert H.work("paged_attention", sh, "fp8k")[1] == H.attention_bytes(sh, 2, 1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_main_without_gpu(capsys, tmp_path):
    assert H.main(["--op", "norm_modulate", "--out", str(tmp_path / "x.json")]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU" in out and "norm_modulate" in out and "ok" in out
    assert not (tmp_path / "x.json").exists()                             # no fake numbers written


def test_provider_patterns_select_what_runs(monkeypatch):
    """``--providers``: fnmatch patterns; what they leave out is neither run nor reported."""
    monkeypatch.setattr(H, "_timed", lambda fn, quick, graph=False: (fn(), dict(median_ms=1.0, p20_ms=1.0, p80_ms=1.0))[1])
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    rows = H.run_op("fp8_linear", True, dict(bf16_tflops=1.0, fp8_tflops=2.0, copy_gbps=1.0), [TINY["fp8_linear"]],
                    device="cpu", only=["triton*", "torch-matmul-bf16"])
    assert [r["provider"] for r in rows] == [p for p in H.provider_names("fp8_linear")
                                             if p.startswith("triton") or p == "torch-matmul-bf16"]


def test_main_refuses_an_unknown_op(capsys):
    with pytest.raises(SystemExit):
        H.main(["--op", "paged_attention,bogus"])
    assert "bogus" in capsys.readouterr().err


def test_cuda_graph_timing_reaches_every_provider_and_needs_cuda(monkeypatch):
    """``--cuda-graph``: run_op hands the choice to every timing call; on a CPU it is refused."""
    seen = []
    monkeypatch.setattr(H, "_timed", lambda fn, quick, graph=False: (seen.append(graph), fn(),
                                                                       dict(median_ms=1.0, p20_ms=1.0, p80_ms=1.0))[2])
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    rows = H.run_op("norm_modulate", True, dict(bf16_tflops=1.0, fp8_tflops=2.0, copy_gbps=1.0),
                    [TINY["norm_modulate"]], device="cpu", graph=True)
    assert seen and all(seen) and len(seen) == sum("skipped" not in r for r in rows)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        H.timed(lambda: None, 1, 1, cuda=False, graph=True)


def test_cross_attention_providers_with_the_projection_agree(monkeypatch):
    """The two providers timing attention + output projection + residual compute the same block
    output: the e4m3 o GEMM after the attention, or the projection absorbed into the values (they
    differ by the GEMM's e4m3 rounding of its input, a few percent of the projection's output)."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    fns = {name: fn for name, _, fn in H.providers("cross_attention", TINY["cross_attention"], device="cpu")}
    try:
        gemm, absorbed = fns["triton+o-gemm"]().float(), fns["triton-absorbed"]().float()
    finally:
        H.lpm_ops().set_backend("ref")
    res = fns["triton-absorbed"].inputs[1]["residual"].float()
    assert gemm.shape == absorbed.shape == res.shape == (2, 5, 32)
    y_gemm, y_abs = gemm - res, absorbed - res                     # the projections' outputs
    err = ((y_gemm - y_abs).norm() / y_abs.norm()).item()
    assert 0 < err < 0.1, err                                      # two real paths, one result
