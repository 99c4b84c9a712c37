"""Kernel launches of a piece of model code, counted at the torch dispatcher (any device, CPU too).

Every op that reaches the dispatcher is recorded except those that launch nothing: views
(``OpOverload.is_view``) and allocations. An ``lpm_rt::`` op is one Triton launch (two for a
split-KV attention: the combine, and for a GEMM of bf16 input wider than one N tile: the
row quantization first); an aten op is at least one kernel. This is the measure behind
the fused block form's "short fixed sequence of launches": a launch costs a few microseconds of
CPU and GPU time whatever its size, which at the refiner's small shapes is what dominates.

    python -m lpm_rt.benchmark.launches [--preset tiny] [--fp8|--no-fp8] [--backend triton|ref] [--out F]
"""

from __future__ import annotations

import argparse
import collections
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LaunchCounter", "block_launches", "main"]

_ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh"}


class LaunchCounter(TorchDispatchMode):
    """``with LaunchCounter() as lc: ...`` -> ``lc.ops``: the launching ops, in order."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if func.namespace == "lpm_rt" or not (func.is_view or name in _ALLOCATIONS):
            self.ops.append(f"{func.namespace}::{name}")
        return func(*args, **(kwargs or {}))


def block_launches(model, net: str = "refiner", chunks: int = 2, seed: int = 0) -> dict:
    """Stream ``chunks`` chunks of random audio through ``model`` (an OnlineLPM) and record the
    launches of ``net``'s last block, of its whole denoising pass (``video_pass``: embeddings,
    blocks, head) and of its per-chunk audio projections (``audio_kv``, once per chunk for all
    passes) in the last chunk.
    -> {"block": [op, ...], "pass": n_ops, "audio_kv": [op, ...]}."""
    from ..model.audio import MEL_HOP, MEL_WIN

    cfg = model.cfg
    s, m = cfg.stream, cfg.model
    C, spl = s.chunk_frames, m.vae_temporal * 1000
    ctx = (MEL_WIN - MEL_HOP) + m.audio_context * spl
    g = torch.Generator().manual_seed(seed)
    dev = next(model.backbone.parameters()).device
    dt = model.backbone.patch_embedding.weight.dtype
    refs = torch.randn(1, m.vae_z_dim, 1, s.latent_h, s.latent_w, generator=g).to(dev, dt)
    state = model.open_stream(refs, torch.tensor([0]), "calm", seed=seed)
    target = getattr(model, net)
    blk = target.blocks[-1]
    seen: dict = {}

    def wrap(mod, attr, key):
        orig = getattr(mod, attr)

        def fwd(*a, **k):
            with LaunchCounter() as lc:
                out = orig(*a, **k)
            seen[key] = lc.ops
            return out
        return orig, fwd

    saved = []
    try:
        for mod, attr, key in ((blk, "forward", "block"), (target, "video_pass", "pass"),
                               (target, "audio_kv", "audio_kv")):
            orig, fwd = wrap(mod, attr, key)
            saved.append((mod, attr))
            setattr(mod, attr, fwd)
        for _ in range(chunks):
            pcm = torch.randn(1, C * spl + ctx, generator=g) * 0.1
            with torch.no_grad():
                model.step(state, pcm, pcm)
    finally:
        for mod, attr in saved:
            delattr(mod, attr)                   # back to the class's method
        state.close()
    return {"block": seen["block"], "pass": len(seen["pass"]), "audio_kv": seen["audio_kv"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Kernel launches of the online step's blocks, counted at the torch "
                                             "dispatcher (CPU: Triton kernels run in the interpreter).")
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    ap.add_argument("--net", default="refiner", choices=("refiner", "backbone"))
    ap.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=True,
                    help="the fp8 block form (default) or the plain one")
    ap.add_argument("--backend", default="triton", choices=("triton", "ref"))
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if args.backend == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .. import ops
    from ..config import KVDtype, preset
    from ..model.online import OnlineLPM

    cfg = preset(args.preset)
    cfg = cfg.replace(stream=cfg.stream.replace(backbone_steps=1),
                      runtime=cfg.runtime.replace(kv_dtype=KVDtype.FP8, max_sessions=1))
    model = OnlineLPM(cfg).init_weights(0).eval()
    if args.fp8:
        model.quantize_fp8_()
    prev = ops.get_backend()
    ops.set_backend(args.backend)
    try:
        r = block_launches(model, args.net)
    finally:
        ops.set_backend(prev)
    print(f"{args.preset} {args.net}, {'fp8' if args.fp8 else 'plain'} form, {args.backend} backend: "
          f"{len(r['block'])} launches per block, {r['pass']} per pass, {len(r['audio_kv'])} per chunk for the "
          f"audio k|v of all blocks")
    for op, n in collections.Counter(r["block"]).most_common():
        print(f"  {n:3d}  {op}")
    if args.out:
        import json
        with open(args.out, "w") as f:
            json.dump(dict(preset=args.preset, net=args.net, form="fp8" if args.fp8 else "plain", backend=args.backend,
                           block=r["block"], launches_per_block=len(r["block"]), launches_per_pass=r["pass"],
                           audio_kv_launches_per_chunk=len(r["audio_kv"])), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
