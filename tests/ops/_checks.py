"""Shared accuracy checks for op tests (flash-attention's self-calibrating bound, SQNR, cosine)."""

from __future__ import annotations

import importlib

import torch


def _report(name: str, got: torch.Tensor, ref: torch.Tensor) -> str:
    err = (got.double() - ref.double()).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return (f"{name}: max err {err.max().item():.3e}, mean err {err.mean().item():.3e}, worst index "
            f"{idx} (got {got.double()[idx].item():.6g}, ref {ref.double()[idx].item():.6g})")


def assert_calibrated(got, low, ref, floor: float = 1e-6, name: str = "out"):
    """err(got vs ref) <= 2 * err(low vs ref) + floor, max over elements; ref is the fp64 reference,
    low the same math done in the kernel's low precision. Also asserts every element is finite."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values ({(~torch.isfinite(got)).sum()} of {got.numel()})"
    err = (got.double() - ref.double()).abs().max().item()
    bound = 2 * (low.double() - ref.double()).abs().max().item() + floor
    assert err <= bound, f"{_report(name, got, ref)}; bound {bound:.3e}"


def sqnr_db(got, ref) -> float:
    """20 log10(|ref| / |ref - got|) over the whole tensor."""
    ref, got = ref.double(), got.double()
    return (20 * torch.log10(ref.norm() / (ref - got).norm().clamp_min(1e-300))).item()


def cosine(got, ref) -> float:
    return torch.nn.functional.cosine_similarity(got.double().flatten(), ref.double().flatten(), dim=0).item()


def assert_sqnr(got, ref, min_db: float = 25.0, min_cos: float = 0.995, name: str = "out"):
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    s, c = sqnr_db(got, ref), cosine(got, ref)
    assert s >= min_db and c >= min_cos, f"{_report(name, got, ref)}; SQNR {s:.1f} dB (>= {min_db}), cos {c:.5f}"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (or a max value for dtypes without NaN) so unwritten elements show."""
    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).fill_(0x7F).view(t.dtype)     # 0x7F is e4m3fn's NaN
    return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)



def spy_triton(monkeypatch, op: str, kernel: str) -> list:
    """Make ``lpm_rt.ops.<op>.<op>_ref`` raise (a fallback cannot pass) and record every launch
    grid of ``csrc_triton.<op>.<kernel>``; returns the (live) list of grids."""
    kern = importlib.import_module(f"csrc_triton.{op}")
    mod = importlib.import_module(f"lpm_rt.ops.{op}")             # the module, not the function

    def fallback(*a, **k):
        raise AssertionError(f"{op} fell back to the reference")

    launches, real = [], getattr(kern, kernel)

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(mod, f"{op}_ref", fallback)
    monkeypatch.setattr(kern, kernel, Spy())
    return launches


def stream_chunks(model, backend: str, n_chunks: int = 2):
    """Stream ``n_chunks`` of seeded random speaker/listener audio through an OnlineLPM with the
    ops ``backend`` (two reference frames, prompt "smile"), restoring the previous backend.
    -> (velocity of every chunk's last backbone step, fp32; the decoded video)."""
    import lpm_rt.ops as ops
    from lpm_rt.model.audio import MEL_HOP, MEL_WIN

    s, m = model.cfg.stream, model.cfg.model
    C, spl = s.chunk_frames, m.vae_temporal * 1000
    ctx = (MEL_WIN - MEL_HOP) + m.audio_context * spl
    g = torch.Generator().manual_seed(1)
    spk, lis = (torch.cat([torch.zeros(1, ctx), torch.randn(1, n_chunks * C * spl, generator=g) * 0.1], 1)
                for _ in range(2))
    ref_lat = torch.randn(1, m.vae_z_dim, 2, s.latent_h, s.latent_w, generator=g)
    ref_lat = ref_lat.to(model.backbone.patch_embedding.weight.dtype)
    prev = ops.get_backend()
    ops.set_backend(backend)
    try:
        state = model.open_stream(ref_lat, torch.tensor([0, 2]), "smile", seed=5)
        cap, video = [], []
        for c in range(n_chunks):
            sl = slice(c * C * spl, (c + 1) * C * spl + ctx)
            video.append(model.step(state, spk[:, sl], lis[:, sl], capture=cap))
        state.close()
    finally:
        ops.set_backend(prev)
    return torch.cat([c[1] for c in cap], 2).float(), torch.cat(video, 2)


def spy_constexprs(monkeypatch, kernel) -> list:
    """Record the constexprs (semantic + tiles) of every JIT launch of ``kernel`` (a csrc_triton
    @triton.jit function); returns the (live) list, one dict per launch."""
    from lpm_rt.ops import _launch

    launches, real = [], _launch._Jit.__getitem__

    def spy(self, grid):
        if self.fn is kernel:
            launches.append(dict(self.constexprs))
        return real(self, grid)
    monkeypatch.setattr(_launch._Jit, "__getitem__", spy)
    return launches
