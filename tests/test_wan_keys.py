"""Wan2.1 compatibility: parameter names and shapes of the shared parts (edge-1.3b = Wan2.1-T2V-1.3B)."""

import pytest
import torch

from lpm_rt import ArtifactError
from lpm_rt.checkpoint import load_wan_state_dict
from lpm_rt.config import preset
from lpm_rt.model.dit import LPMDiT, lpm_only_keys


def wan_t2v_keys(dim, ffn, layers, text_dim=4096, freq_dim=256, in_dim=16, out_dim=16):
    """The key layout of Wan2.1's T2V DiT (WanModel.state_dict()), written out from its structure."""
    k = {"patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
         "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
         "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
         "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
         "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
         "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
         "head.head.weight": (out_dim * 4, dim), "head.head.bias": (out_dim * 4,),
         "head.modulation": (1, 2, dim)}
    for i in range(layers):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                k[f"{b}{attn}.{p}.weight"], k[f"{b}{attn}.{p}.bias"] = (dim, dim), (dim,)
            k[f"{b}{attn}.norm_q.weight"] = k[f"{b}{attn}.norm_k.weight"] = (dim,)
        k[f"{b}norm3.weight"] = k[f"{b}norm3.bias"] = (dim,)
        k[f"{b}ffn.0.weight"], k[f"{b}ffn.0.bias"] = (ffn, dim), (ffn,)
        k[f"{b}ffn.2.weight"], k[f"{b}ffn.2.bias"] = (dim, ffn), (dim,)
        k[f"{b}modulation"] = (1, 6, dim)
    return k


def test_edge_1p3b_key_layout_pinned():
    cfg = preset("edge-1.3b").model
    with torch.device("meta"):
        dit = LPMDiT(cfg)
    sd = {k: tuple(v.shape) for k, v in dit.state_dict().items()}
    wan = wan_t2v_keys(1536, 8960, 30)
    assert len(wan) == 825
    shared = {k: v for k, v in sd.items() if k not in lpm_only_keys(sd)}
    assert shared == wan
    wan_params = sum(torch.Size(s).numel() for s in wan.values())
    assert 1.40e9 < wan_params < 1.43e9, wan_params          # Wan2.1-T2V-1.3B: ~1.42 B parameters


def test_wan_state_dict_round_trip():
    cfg = preset("tiny").model
    dit = LPMDiT(cfg).init_weights(0)
    wan = {k: torch.randn(s) for k, s in wan_t2v_keys(cfg.dim, cfg.ffn_dim, cfg.num_layers,
                                                       text_dim=cfg.text_dim).items()}
    wan = {"model." + k: v for k, v in wan.items()}          # prefixed as in causal-student checkpoints
    extra = load_wan_state_dict(dit, wan)
    own = dit.state_dict()
    for k, v in wan.items():
        assert torch.equal(own[k[len("model."):]], v)
    assert extra and all(k in lpm_only_keys(own) for k in extra)


def test_wan_state_dict_mismatch_is_refused():
    cfg = preset("tiny").model
    dit = LPMDiT(cfg)
    wan = {k: torch.zeros(s) for k, s in wan_t2v_keys(cfg.dim, cfg.ffn_dim, cfg.num_layers, text_dim=cfg.text_dim).items()}
    bad = dict(wan)
    bad["blocks.0.ffn.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ArtifactError, match="shape mismatch"):
        load_wan_state_dict(dit, bad)
    missing = dict(wan)
    del missing["head.modulation"]
    with pytest.raises(ArtifactError, match="missing"):
        load_wan_state_dict(dit, missing)
