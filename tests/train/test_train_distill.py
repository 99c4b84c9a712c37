"""Pieces of the distillation: step selection, the DMD gradient, the temporal term, the refiner's
initialisation."""

import copy

import torch

from lpm_rt.config import preset
from lpm_rt.model.online import OnlineLPM
from lpm_rt.train.distill import dmd_loss, init_refiner, pick_steps, still_weight, temporal_loss
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


def test_still_weight_marks_what_holds_still_in_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 1, 6, 6, generator=g).repeat(1, 1, 5, 1, 1)       # a still clip
    x[0, :, :, 1, 2] += torch.randn(4, 5, generator=g)                        # one pixel moves (clip 0)
    x[1, :, 2:, 4, 4] += 0.5                                                  # one steps once (clip 1)
    w = still_weight(x, 0.02)
    assert w.shape == (2, 1, 1, 6, 6)
    assert w[0, 0, 0, 1, 2] == 0 and w[1, 0, 0, 4, 4] == 0 and w.sum() == 2 * 36 - 2
    assert still_weight(x, 10.0).sum() == 72                                  # a loose threshold: all


def test_temporal_loss_penalises_change_only_where_marked():
    g = torch.Generator().manual_seed(1)
    still = torch.randn(1, 4, 1, 5, 5, generator=g).repeat(1, 1, 6, 1, 1)
    w = torch.zeros(1, 1, 1, 5, 5)
    w[..., :, :2] = 1                                                         # two columns marked
    assert float(temporal_loss(still, w)) == 0.0
    jitter = (still + 0.1 * torch.randn(still.shape, generator=g)).requires_grad_(True)
    loss = temporal_loss(jitter, w)
    d = jitter.detach()[:, :, 1:] - jitter.detach()[:, :, :-1]
    want = d[..., :, :2].square().mean()                                      # mean over marked pixels
    assert torch.allclose(loss.detach(), want, rtol=1e-5) and float(loss.detach()) > 1e-3
    loss.backward()
    assert jitter.grad[..., :, 2:].abs().max() == 0 and jitter.grad[..., :, :2].abs().max() > 0
    assert float(temporal_loss(jitter.detach(), torch.zeros_like(w))) == 0.0          # none marked: no term
