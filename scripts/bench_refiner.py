"""The refiner's per-chunk step (audio projections, re-noise, one pass over [refs | chunk] with
its cache writes) timed per backend, side by side in one process: the reference ops eager and
under ``torch.compile`` (traced as one graph; default mode, ``reduce-overhead``: Inductor's own
CUDA graphs, and ``lowp-attention``: the reference attention as SDPA in bf16, not upcast to fp32 --
the strongest torch baselines), then the Triton kernels eager and replayed as one CUDA graph, in
bf16 and with FP8 block linears (per-channel weight scales: the h100 target's format).

    python scripts/bench_refiner.py --preset edge-1.3b --out refiner.json          # CUDA
    TRITON_INTERPRET=1 python scripts/bench_refiner.py --preset tiny --device cpu  # smoke

Only the refiner runs, so the backbone is built with one layer (``--backbone-layers``; it is
not part of the step): the refiner itself is the preset's, at the preset's 480P chunk. Every
provider's output is compared with the fp32 reference (relative L2) so a fast wrong kernel
shows. Timing on CUDA: ``triton.testing.do_bench`` medians (warm-up and repeats in ms); on CPU:
median wall time of a few calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch


def build(name: str, device: str, dtype: str, kv: str, backbone_layers: int, seed: int = 0):
    from lpm_rt.config import RuntimeConfig, preset
    from lpm_rt.loader import _place
    from lpm_rt.model.online import OnlineLPM

    cfg = preset(name)
    cfg = cfg.replace(model=cfg.model.replace(num_layers=backbone_layers),
                      runtime=RuntimeConfig(device=device, dtype=dtype, kv_dtype=kv, max_sessions=1))
    return _place(OnlineLPM(cfg).init_weights(seed)).eval()


def step_inputs(model, seed: int = 0):
    """An open stream (three reference frames prefilled) and one chunk's refiner inputs."""
    from lpm_rt.model.audio import AUDIO_RATE, MEL_HOP, MEL_WIN, log_mel

    s, m = model.cfg.stream, model.cfg.model
    g = torch.Generator().manual_seed(seed)
    dev = next(model.refiner.parameters()).device
    dt = next(model.refiner.parameters()).dtype
    refs = torch.randn(1, m.vae_z_dim, s.reference_slots, s.latent_h, s.latent_w, generator=g).to(dev, dt)
    state = model.open_stream(refs, torch.tensor([0, 2, 2][: s.reference_slots]), "calm", seed=seed)
    n = (MEL_WIN - MEL_HOP) + (m.audio_context + s.chunk_frames) * m.vae_temporal * (AUDIO_RATE // s.fps)
    pcm = (0.3 * torch.randn(2, 1, n, generator=g)).to(dev)
    inputs = model._chunk_inputs(state, pcm[0], pcm[1])
    _, rf_attn = inputs.attention(state)
    mels = (log_mel(inputs.spk, m.n_mels), log_mel(inputs.lis, m.n_mels))
    shape = (1, m.vae_z_dim, s.chunk_frames, s.latent_h, s.latent_w)
    x0 = torch.randn(shape, generator=g).to(dev, dt)
    noise = torch.randn(shape, generator=g).to(dev, dt)
    return state, (x0, noise, mels, rf_attn)


class LowPrecisionAttention:
    """``set(True)``: the reference attention computes in the activation dtype (SDPA in bf16 when
    traced) instead of upcasting to fp32 -- the strongest form of the torch baseline, whose
    attention then runs on the vendor kernels; ``set(False)`` restores the reference."""

    def __init__(self):
        import functools
        import importlib

        pa = importlib.import_module("lpm_rt.ops.paged_attention")     # the module, not the op
        self.mod, self.ref = pa, pa.paged_attention_ref
        self.lowp = functools.partial(self.ref, upcast=False)

    def set(self, on: bool) -> None:
        self.mod.paged_attention_ref = self.lowp if on else self.ref


def graphed(fn, cuda: bool):
    """fn captured once in a CUDA graph (after one eager warm-up call); on CPU fn itself."""
    if not cuda:
        return fn
    out = fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    g.replay()

    def replay():
        g.replay()
        return out
    return replay


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="edge-1.3b", help="model preset (default edge-1.3b)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone-layers", type=int, default=1, help="backbone depth built (unused by the step)")
    ap.add_argument("--providers", default=None, help="comma-separated subset of the providers")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    from lpm_rt import ops
    from lpm_rt.benchmark import git_state
    from lpm_rt.benchmark.kernels import rel_l2, timed

    cuda = args.device.startswith("cuda")
    act, kv = ("bf16", "fp8") if cuda else ("fp32", "fp32")
    want = set(args.providers.split(",")) if args.providers else None
    res = dict(preset=args.preset, device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__,
               act_dtype=act, kv_dtype=kv, **git_state(), results=[])
    try:
        import triton
        res["triton"] = triton.__version__
    except ImportError:
        pass

    # the fp32 reference output, for every provider's error
    m32 = build(args.preset, args.device, "fp32", kv, args.backbone_layers)
    st, (x0, noise, mels, attn) = step_inputs(m32)
    ops.set_backend("ref")
    with torch.no_grad():
        want_out = m32._refine(st, x0, noise, mels, attn).float()
    c = m32.cfg
    res["shape"] = dict(refiner_layers=c.model.refiner_layers, dim=c.model.dim, heads=c.model.num_heads,
                        chunk_frames=c.stream.chunk_frames, tokens=c.stream.chunk_frames * c.stream.tokens_per_frame,
                        kv_tokens=(c.stream.reference_slots + c.stream.chunk_frames) * c.stream.tokens_per_frame)
    st.close()
    del m32, st, attn
    if cuda:
        torch.cuda.empty_cache()

    model = build(args.preset, args.device, act, kv, args.backbone_layers)
    st, (x0, noise, mels, attn) = step_inputs(model)
    dt = next(model.refiner.parameters()).dtype

    fp8_model = None
    lowp = LowPrecisionAttention()
    plan = [("ref-eager", "ref", False, None), ("triton", "triton", False, None),
            ("triton-graph", "triton", True, None), ("triton-fp8", "triton", False, "fp8"),
            ("triton-fp8-graph", "triton", True, "fp8"), ("ref-compiled", "ref", False, "default"),
            ("ref-compiled-reduce-overhead", "ref", False, "reduce-overhead"),
            ("ref-compiled-lowp-attention", "ref", False, "lowp")]
    for name, backend, graph, mode in plan:
        if want is not None and name not in want:
            continue
        row = dict(provider=name, backend=backend, cuda_graph=graph)
        try:
            ops.set_backend(backend)
            net = model
            if mode == "fp8":                   # the same weights as FP8 block linears, per-channel scales
                if fp8_model is None:
                    fp8_model = copy.deepcopy(model).quantize_fp8_()
                net = fp8_model

            def fn(net=net):
                return net._refine(st, x0, noise, mels, attn)
            t0 = time.perf_counter()
            lowp.set(mode == "lowp")
            if mode in ("default", "reduce-overhead", "lowp"):
                comp = torch.compile(fn, mode="default" if mode == "lowp" else mode)

                def fn(comp=comp):
                    with torch.no_grad():
                        return comp()
                fn()
                if cuda:
                    torch.cuda.synchronize()
            elif graph:
                with torch.no_grad():
                    fn = graphed(fn, cuda)
            row["setup_s"] = time.perf_counter() - t0
            with torch.no_grad():
                out = fn().float()
                row["rel_l2_vs_fp32_ref"] = rel_l2(out, want_out)
                row.update(timed(fn, 25 if args.quick else 100, 100 if args.quick else 400, cuda,
                                 cpu_reps=3 if args.quick else 7))
        except Exception as e:                               # noqa: BLE001 -- report, keep the rest
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        res["results"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:                                         # after every row: a time limit keeps the rest
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)
    lowp.set(False)
    base = {r["provider"]: r.get("median_ms") for r in res["results"]}
    best_torch = min((v for k, v in base.items() if k.startswith("ref-compiled") and v), default=None)
    if best_torch:
        res["speedup_vs_best_compiled_ref"] = {k: best_torch / v for k, v in base.items()
                                               if k.startswith("triton") and v}
    res["param_dtype"] = str(dt)
    print(json.dumps({k: v for k, v in res.items() if k != "results"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if all("error" not in r for r in res["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
