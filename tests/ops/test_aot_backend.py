"""The ``aot`` ops backend on a CPU: an h100 artifact of the tiny model drives the online step.

Each manifest record stands in for its cubin: :class:`InterpretedCubin` checks the arguments
against the compiled contract exactly as the device launch does (``CubinKernel.pack``: names,
pointer dtypes, alignment, specialized strides, divisibility), then runs the same Triton
function in the interpreter with the record's frozen constexprs (tiles, split-KV, epilogue
flags). What is tested is everything the device launch depends on except the driver call:
which specialization each op picks, the grid it sizes from the artifact's tiles, and every
argument it passes. The JIT kernels are made unreachable meanwhile."""

from __future__ import annotations

import importlib
import inspect
import json

import pytest
import torch

import lpm_rt
import lpm_rt.ops as ops
from lpm_rt.artifact import CubinKernel, _load_weights
from lpm_rt.config import LPMConfig
from lpm_rt.model.online import OnlineLPM
from lpm_rt.ops import _launch

from _checks import assert_sqnr, stream_chunks


class InterpretedCubin(CubinKernel):
    """A manifest record whose "device" is Triton's interpreter (FIX_ROUND/IEEE: its numerics)."""

    launched: list

    def launch(self, grid, args, stream=None, packed=None):
        self.pack(args)                                    # raises outside the compiled contract
        mod, fn_name = self.record["kernel"].rsplit(".", 1)
        fn = REAL[(mod, fn_name)]
        sig = inspect.signature(fn.fn).parameters
        ce = {n: v for n, v in self.record["constexprs"].items() if n in sig and "constexpr" in str(sig[n].annotation)}
        ce.update({n: True for n in _launch.NUMERICS if n in ce})
        grid = tuple(grid) + (1,) * (3 - len(grid))
        fn[grid](**args, **ce, num_warps=self.record["num_warps"])
        self.launched.append(self.record["name"])


REAL: dict = {}


@pytest.fixture
def aot_kernels(artifact, monkeypatch):
    """Install the h100 artifact's records as InterpretedCubins; JIT launches raise."""
    yield from _install(artifact("h100"), monkeypatch)
    _launch.uninstall()


def _install(d, monkeypatch):
    meta = json.loads((d / "manifest.json").read_text())
    launched = []

    class Forbidden:
        def __init__(self, real):
            self.fn = real.fn

        def __getitem__(self, grid):
            raise AssertionError(f"JIT launch of {self.fn.__name__} under the aot backend")

    for rec in meta["kernels"]:
        mod, fn_name = rec["kernel"].rsplit(".", 1)
        m = importlib.import_module(mod)
        real = REAL.setdefault((mod, fn_name), getattr(m, fn_name))
        monkeypatch.setattr(m, fn_name, Forbidden(real))
    kernels = {}
    for rec in meta["kernels"]:
        k = InterpretedCubin(rec)
        k.launched = launched
        kernels[rec["name"]] = k
    _launch.install(kernels)
    yield d, meta, launched


def _on_jit_kernels(fn):
    """fn() with the real JIT kernels back in place of the cubins (the reference run)."""
    for (mod, fn_name), real in REAL.items():
        setattr(importlib.import_module(mod), fn_name, real)
    ops.set_backend("triton")
    try:
        return fn()
    finally:
        ops.set_backend("ref")


def _assert_matches_jit(model, got, video):
    """The step streamed on the JIT kernels (the records uninstalled, the real kernels back) gives
    ``got`` / ``video`` up to the tiles' summation order: >= 60 dB."""
    _launch.uninstall()
    want, want_video = _on_jit_kernels(lambda: stream_chunks(model, "triton"))
    assert_sqnr(got, want, min_db=60.0, min_cos=0.9999, name="velocity")
    assert_sqnr(video, want_video, min_db=60.0, min_cos=0.9999, name="video")


def _model(d, meta):
    """The artifact's weights on the CPU in its activation dtype (what load_artifact puts on the GPU)."""
    cfg = LPMConfig.from_dict(meta["config"])
    cfg = cfg.replace(stream=cfg.stream.replace(backbone_steps=1),
                      runtime=cfg.runtime.replace(dtype="bf16", kv_dtype=meta["target"]["kv_dtype"], max_sessions=1))
    model = OnlineLPM(cfg)
    assert _load_weights(d, meta, model, torch.float32, fp8_gemms=True) > 0
    model.backbone.to(torch.bfloat16)
    model.refiner.to(torch.bfloat16)
    return model.eval()


def test_online_step_runs_on_the_artifacts_kernels(aot_kernels):
    """Every op of the step launches a compiled specialization, and the result is the JIT
    kernels' result up to their different tiles: summation order, where a bf16 value or an fp8
    code may round the other way. Measured bit-identical here (the tiny model's sums fit one
    tile), so >= 60 dB; a 2 % error in one argument (the softmax scale) gives 38 dB."""
    d, meta, launched = aot_kernels
    model = _model(d, meta)
    got, video = stream_chunks(model, "aot")
    roles = {r["name"]: r["role"] for r in meta["kernels"]}
    used = {roles[n] for n in launched}
    assert used == {"attention", "combine", "linear", "norm", "cache", "cross_attention"}, used
    # the text and audio cross-attentions with their output projections absorbed and the norm
    # after each fused
    assert {n.split("_sm_")[0] for n in launched if n.startswith("cross_attention_out_")} == {
        "cross_attention_out_text_norm", "cross_attention_out_audio_norm"}, sorted(set(launched))
    _assert_matches_jit(model, got, video)              # the JIT reference: same kernels, own tiles


def test_guided_audio_runs_on_the_artifacts_kernels(aot_kernels):
    """Audio guidance (listener gain 2: the tiny model's last block is a listener block): silence's
    window and the chunk's run as one guided kernel, with the FFN's adaLN fused, from the cubins;
    the step matches the JIT kernels as unguided does."""
    d, meta, launched = aot_kernels
    model = _model(d, meta)
    model.cfg = model.cfg.replace(stream=model.cfg.stream.replace(listener_guidance=2.0))
    got, video = stream_chunks(model, "aot")
    assert any(n.startswith("cross_attention_out_audio_guided_norm_") for n in launched), sorted(set(launched))
    _assert_matches_jit(model, got, video)


def test_fp8k_pages_run_on_the_artifacts_kernels(tmp_path, monkeypatch):
    """An h100 artifact compiled for fp8k pages (e4m3 K, bf16 V): the step's cache writes and
    attentions launch its V16 specializations (what the launchers ask for on such pages matches
    what the compile froze), and the result is the JIT kernels' as for fp8 pages."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    from artifact_fixture import compile_artifact

    d = tmp_path / "tiny-h100-fp8k"
    r = compile_artifact("tiny", "h100", d, "--kv-dtype", "fp8k", "--no-step-check")
    assert r.returncode == 0, r.stderr[-3000:]
    gen = _install(d, monkeypatch)
    _, meta, launched = next(gen)
    try:
        model = _model(d, meta)
        assert model.make_pools()[0].v.dtype == torch.bfloat16
        got, video = stream_chunks(model, "aot")
        v16 = {r["name"] for r in meta["kernels"] if r["constexprs"].get("V16")}
        assert {n.split("_sm_")[0] for n in launched if n in v16} >= {
            "paged_attention_backbone", "paged_attention_refiner", "cache_write"}, sorted(set(launched))
    finally:
        _launch.uninstall()
    _assert_matches_jit(model, got, video)


def test_a_record_without_a_newer_constexpr_matches_its_default(aot_kernels):
    """An artifact compiled before a constexpr existed (its records lack V16) still serves calls
    that take the kernel's default for it (fp8 K and V pages), and refuses the ones that do not
    (fp8 K beside bf16 V pages) -- never a silent mismatch."""
    _, meta, launched = aot_kernels
    old = {}
    for rec in meta["kernels"]:
        rec = dict(rec, constexprs={n: v for n, v in rec["constexprs"].items() if n != "V16"})
        k = InterpretedCubin(rec)
        k.launched = launched
        old[rec["name"]] = k
    _launch.install(old)
    cfg = LPMConfig.from_dict(meta["config"])
    H, D, ps = cfg.model.num_heads, cfg.model.head_dim, cfg.stream.page_size
    q = torch.randn(1, 2 * ps, H, D).bfloat16()
    k8 = torch.randn(4, ps, H, D).to(torch.float8_e4m3fn)
    sc = torch.ones(4, H)
    table, lens = torch.arange(4, dtype=torch.int32)[None], torch.tensor([3 * ps], dtype=torch.int32)
    ops.set_backend("aot")
    try:
        out = ops.paged_attention(q, k8, k8, table, lens, sc, sc)
        assert any(n.startswith("paged_attention_") for n in launched) and torch.isfinite(out).all()
        with pytest.raises(lpm_rt.ArtifactError, match="V16"):
            ops.paged_attention(q, k8, k8.bfloat16(), table, lens, sc)
    finally:
        ops.set_backend("ref")


def test_a_call_no_specialization_accepts_is_refused(aot_kernels):
    """fp32 activations against a bf16 artifact, and a head dim it was not compiled for: refused
    with the reason, never compiled on the spot."""
    _, meta, launched = aot_kernels
    ops.set_backend("aot")
    try:
        x = torch.randn(2, 5, 64)
        shift = scale = torch.zeros(2, 1, 64)
        with pytest.raises(lpm_rt.ArtifactError, match="x_ptr is torch.float32 but the cubin was compiled for bf16"):
            ops.norm_modulate(x, shift, scale, out_fp8=True)
        with pytest.raises(lpm_rt.ArtifactError, match="no csrc_triton.norm_modulate._norm_modulate_kernel compiled"):
            ops.norm_modulate(x.bfloat16(), shift, scale, out_fp8=False)
        kp = torch.zeros(4, 8, 2, 32, dtype=torch.float8_e4m3fn)
        sc = torch.ones(4, 2)
        with pytest.raises(lpm_rt.ArtifactError, match="HEAD_DIM"):
            ops.paged_attention(torch.randn(1, 3, 2, 32).bfloat16(), kp, kp, torch.zeros(1, 4, dtype=torch.int32),
                                torch.tensor([8], dtype=torch.int32), sc, sc)
    finally:
        ops.set_backend("ref")
    assert launched == []


def test_aot_backend_needs_an_artifact():
    _launch.uninstall()
    ops.set_backend("aot")
    try:
        with pytest.raises(lpm_rt.ArtifactError, match="without an artifact's kernels"):
            ops.norm_modulate(torch.randn(1, 2, 64), torch.zeros(1, 1, 64), torch.zeros(1, 1, 64))
    finally:
        ops.set_backend("ref")


def test_wide_bf16_input_gemm_runs_quantizer_then_gemm(artifact, monkeypatch):
    """The demo model is wider than one N tile: its o / FFN-down GEMMs quantize their bf16 input
    in a launch of its own. The demo h100 artifact holds both specializations, and the aot
    launcher runs them: the same output as the JIT kernels, bit for bit."""
    d = artifact("h100", "demo")
    gen = _install(d, monkeypatch)
    _, meta, launched = next(gen)
    try:
        g = torch.Generator().manual_seed(0)
        C = meta["config"]["model"]["dim"]
        x = torch.randn(1, 5, C, generator=g).bfloat16()
        w8, ws = ops.quantize_fp8_weight(torch.randn(C, C, generator=g) * C ** -0.5)
        bias, res = torch.randn(C, generator=g).bfloat16(), torch.randn(1, 5, C, generator=g).bfloat16()
        gate = torch.randn(1, 1, C, generator=g)
        ops.set_backend("aot")
        got = ops.fp8_linear(x, None, w8, ws, bias, residual=res, gate=gate)
        assert [n.split("_sm_")[0] for n in launched] == ["quantize_rows", "fp8_linear_o_ch"], launched
    finally:
        ops.set_backend("ref")
        _launch.uninstall()
    assert torch.equal(got, _on_jit_kernels(lambda: ops.fp8_linear(x, None, w8, ws, bias, residual=res, gate=gate)))


def test_text_attention_takes_the_key_tile_of_its_key_count(aot_kernels):
    """The artifact holds the text cross-attention at key tiles 16, 32 and 64; each call runs the
    tile the JIT launcher would pick for its key count (a few prompt tags: 16, not a 64-key tile
    with 63 masked), and gives the JIT kernels' result bit for bit."""
    d, meta, launched = aot_kernels
    cfg = LPMConfig.from_dict(meta["config"])
    H, D = cfg.model.num_heads, cfg.model.head_dim
    lq = cfg.stream.chunk_frames * cfg.stream.tokens_per_frame
    text = sorted(r["name"] for r in meta["kernels"] if r["name"].startswith("cross_attention_text"))
    assert [n.split("_sm_")[0] for n in text] == [f"cross_attention_text_bn{b}" for b in (16, 32, 64)], text
    g = torch.Generator().manual_seed(0)
    qw = (1 + 0.3 * torch.randn(H * D, generator=g)).bfloat16()
    cases = []
    for n_keys, tile in ((1, 16), (3, 16), (20, 32), (40, 64), (100, 64)):
        q = torch.randn(1, lq, H, D, generator=g).bfloat16()
        kv = torch.randn(1, n_keys, 2, H, D, generator=g).bfloat16()
        cases.append((q, kv[:, :, 0], kv[:, :, 1], tile))
    ops.set_backend("aot")
    try:
        got = []
        for q, k, v, tile in cases:
            got.append(ops.cross_attention(q, k, v, qw))
            assert launched[-1].startswith(f"cross_attention_text_bn{tile}_"), (k.shape[1], launched[-1])
    finally:
        ops.set_backend("ref")
        _launch.uninstall()
    want = _on_jit_kernels(lambda: [ops.cross_attention(q, k, v, qw) for q, k, v, _ in cases])
    assert all(torch.equal(a, b) for a, b in zip(got, want))
