"""Base LPM training: the VAE and the teacher learn a fixed batch; condition dropout does what it says."""

import torch

from lpm_rt.config import preset
from lpm_rt.model.online import OnlineLPM
from lpm_rt.train.base import drop_conditions, encode_batch, teacher_loss, vae_loss
from lpm_rt.train.data import collate
from lpm_rt.train.flow import SILENCE_MEL

from blobsrc import BlobSource


def _fit(params, loss_fn, steps, lr):
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for i in range(steps):
        opt.zero_grad()
        loss = loss_fn(torch.Generator().manual_seed(7))          # same noise every step: a fixed problem
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_vae_and_teacher_loss_decrease_on_fixed_batch():
    cfg = preset("tiny")
    model = OnlineLPM(cfg).init_weights(0)
    batch = collate([BlobSource(cfg, 8).clip(i) for i in range(2)], cfg)
    lv = _fit(model.vae.parameters(), lambda g: vae_loss(model.vae, batch, g)["loss"], 25, 3e-3)
    assert all(map(lambda x: x == x, lv))
    assert lv[-1] < 0.6 * lv[0], f"vae loss {lv[0]:.4f} -> {lv[-1]:.4f}"
    x0, cond = encode_batch(model.vae, batch)
    assert x0.shape == (2, 16, 2, 8, 8) and cond.refs.shape == (2, 16, 2, 8, 8)
    s = cfg.stream
    lt = _fit(model.backbone.parameters(),
              lambda g: teacher_loss(model.backbone, x0, cond, g, s.ref_time_index)["loss"], 25, 1e-3)
    assert lt[-1] < 0.7 * lt[0], f"teacher loss {lt[0]:.4f} -> {lt[-1]:.4f}"


def test_condition_dropout():
    cfg = preset("tiny")
    model = OnlineLPM(cfg).init_weights(0)
    batch = collate([BlobSource(cfg, 8).clip(i) for i in range(8)], cfg)
    _, cond = encode_batch(model.vae, batch)
    keep = drop_conditions(cond, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert torch.equal(keep.tag_ids, cond.tag_ids) and keep.refs is not None
    assert all(torch.equal(a, b) for a, b in zip(keep.mels, cond.mels))
    drop = drop_conditions(cond, torch.Generator().manual_seed(0), 1.0, 1.0, 1.0)
    assert (drop.tag_ids == 0).all() and drop.refs is None
    assert all((m == SILENCE_MEL).all() for m in drop.mels)
    half = drop_conditions(cond, torch.Generator().manual_seed(1), 0.5, 0.0, 0.0)
    dropped = (half.tag_ids == 0).all(1)
    assert 0 < int(dropped.sum()) < 8


def test_latent_normalization_is_exact():
    from lpm_rt.train.base import normalize_latents
    cfg = preset("tiny")
    vae = OnlineLPM(cfg).init_weights(0).vae
    batches = [collate([BlobSource(cfg, 8).clip(i)], cfg) for i in range(3)]
    with torch.no_grad():
        before = vae.decode(vae.encode(batches[0].video))
        std = normalize_latents(vae, batches)
        z = torch.cat([vae.encode(b.video) for b in batches], 2)
        after = vae.decode(vae.encode(batches[0].video))
    assert not torch.allclose(std, torch.ones_like(std), atol=1e-2)      # there was something to fold
    assert torch.allclose(z.transpose(0, 1).flatten(1).std(1), torch.ones(16), atol=2e-3)
    assert (after - before).abs().max() < 1e-4
