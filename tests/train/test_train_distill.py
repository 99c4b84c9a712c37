"""Pieces of the distillation: step selection, the DMD gradient, the refiner's initialisation."""

import copy

import torch

from lpm_rt.config import preset
from lpm_rt.model.online import OnlineLPM
from lpm_rt.train.distill import dmd_loss, init_refiner, pick_steps
from lpm_rt.train.flow import Cond, ode_grid


def _cond(cfg, B=1):
    m = cfg.model
    g = torch.Generator().manual_seed(0)
    mels = tuple(torch.randn(B, (m.audio_context + 4) * 16, m.n_mels, generator=g) for _ in range(2))
    return Cond(torch.tensor([[3]] * B), mels, None, None)


def test_pick_steps_selects_one_step_per_chunk():
    K, B, Fr, C = 3, 2, 6, 2
    inputs = [torch.full((B, 1, Fr, 1, 1), float(k)) for k in range(K)]
    sig, x = pick_steps((1.0, 0.5, 0.25), B, Fr, C, torch.Generator().manual_seed(3), inputs)
    k = x[:, 0, :, 0, 0]                                          # (B, F) chosen step per frame
    assert torch.equal(k[:, ::2], k[:, 1::2])                     # constant inside a chunk
    assert torch.equal(sig, torch.tensor((1.0, 0.5, 0.25))[k.long()])
    assert len(set(k.flatten().tolist())) > 1


def test_dmd_gradient_vanishes_when_fake_equals_real():
    cfg = preset("tiny")
    teacher = OnlineLPM(cfg).init_weights(0).backbone.eval()
    cond = _cond(cfg)
    x = torch.randn(1, 16, 4, 8, 8, requires_grad=True)
    same = dmd_loss(x, teacher, copy.deepcopy(teacher), cond, torch.Generator().manual_seed(1), 1.0, -8)
    assert float(same["loss"].detach()) < 1e-10 and float(same["dmd_grad"]) < 1e-5
    other = OnlineLPM(cfg).init_weights(5).backbone.eval()
    diff = dmd_loss(x, teacher, other, cond, torch.Generator().manual_seed(1), 1.0, -8)
    diff["loss"].backward()
    assert float(diff["loss"].detach()) > 1e-6 and x.grad.abs().sum() > 0


def test_ode_grid_contains_student_levels():
    grid = ode_grid(4, 1.0, (1.0, 0.375))
    assert grid[0] == 1.0 and grid[-1] == 0.0 and 0.375 in grid and grid == sorted(grid, reverse=True)


def test_refiner_starts_from_teacher_blocks():
    cfg = preset("tiny")
    a, b = OnlineLPM(cfg).init_weights(0), OnlineLPM(cfg).init_weights(1)
    init_refiner(b.refiner, a.backbone)
    for k, v in b.refiner.state_dict().items():
        assert torch.equal(v, a.backbone.state_dict()[k]), k
