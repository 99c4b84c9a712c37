"""An artifact's untuned kernels launch as the JIT path does: for the kernel families whose h100
and orin table entries defer to the launchers' rules (warps, stages), the AOT variants of a preset
carry exactly what the JIT launcher picks at that preset's shapes. (On an H200 the earlier frozen
8-warp cache write ran 1.4x slower than the JIT kernel at the demo's shapes.)"""

from __future__ import annotations

import pytest
import torch

from lpm_rt import ops
from lpm_rt.config import preset


def jit_picks(monkeypatch) -> dict:
    """{kernel function name: (num_warps, num_stages)} of every JIT launch configured from now on."""
    from lpm_rt.ops import _launch

    seen, init = {}, _launch._Jit.__init__

    def spy(self, fn, constexprs, num_warps, num_stages):
        init(self, fn, constexprs, num_warps, num_stages)
        seen[fn.fn.__name__] = (num_warps, num_stages)

    monkeypatch.setattr(_launch._Jit, "__init__", spy)
    return seen


@pytest.mark.parametrize("name", ["demo", "edge-1.3b", "lpm-17b"])
@pytest.mark.parametrize("tgt", ["h100", "orin"])
def test_untuned_aot_variants_take_the_jit_launch_config(triton_backend, monkeypatch, name, tgt):
    from lpm_compile.kernels import BuildContext, enumerate_variants
    from lpm_compile.targets import target

    cfg = preset(name)
    m, s = cfg.model, cfg.stream
    fmt = "fp8_e4m3_channel" if tgt == "h100" else "int8_channel"
    variants, _ = enumerate_variants(BuildContext(cfg, target(tgt), frozenset({fmt})))
    aot = {}
    for v in variants:
        aot.setdefault(v.entry.function, set()).add((v.num_warps, v.num_stages))

    seen = jit_picks(monkeypatch)
    C, D, H, ps = m.dim, m.head_dim, 1, s.page_size
    x = torch.randn(1, 2, C)
    ops.norm_modulate(x, torch.zeros(1, 1, C), torch.zeros(1, 1, C), 1e-6)
    kp, vp = torch.zeros(2, ps, H, D), torch.zeros(2, ps, H, D)
    ops.cache_write(torch.randn(ps, H, D), torch.randn(ps, H, D), kp, vp, torch.arange(ps) + ps)
    ops.cross_attention(torch.randn(1, 3, 2, D), torch.randn(1, 5, 2, D), torch.randn(1, 5, 2, D))
    ops.cross_attention_out(torch.randn(1, 3, 2, D), torch.randn(1, 5, 2, D), torch.randn(1, 5, 2, C),
                            residual=torch.randn(1, 3, C))
    if tgt == "h100":                     # the absorbed form is the fp8 block form's
        assert "_cross_attn_out_kernel" in aot, sorted(aot)

    for fn, check_stages in (("_norm_modulate_kernel", False), ("_cache_write_kernel", False),
                             ("_cross_attn_kernel", True), ("_cross_attn_out_kernel", True)):
        warps, stages = seen[fn]
        for w, st in aot.get(fn, ()):
            assert w == warps, (fn, name, tgt, w, warps)
            if check_stages:              # the other two have no loop to pipeline
                assert st == stages, (fn, name, tgt, st, stages)
