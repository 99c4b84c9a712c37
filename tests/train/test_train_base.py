"""Base LPM training: the VAE and the teacher learn a fixed batch; condition dropout does what it says."""

import pytest
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


def test_lr_schedule_warmup_then_cosine():
    from lpm_rt.train.loop import lr_at
    assert [lr_at(s, 1.0, 4) for s in (0, 3, 50)] == [0.25, 1.0, 1.0]          # constant by default
    sched = [lr_at(s, 1.0, 4, total=20, final=0.1) for s in range(20)]
    assert sched[:4] == [0.25, 0.5, 0.75, 1.0] and abs(sched[-1] - 0.1) < 1e-9
    assert all(a >= b for a, b in zip(sched[3:], sched[4:]))                  # monotone decay


def test_edge_weight_puts_the_loss_on_features():
    """A 2-pixel 'mouth' on a flat frame: unweighted, missing it costs little of the mean error;
    edge-weighted, the same miss costs several times more (relative to a uniform error)."""
    from lpm_rt.train.base import edge_weight
    video = torch.zeros(1, 3, 1, 32, 32)
    video[..., 15:17, 12:20] = 1.0
    w = edge_weight(video, 2.0)
    assert w.shape == (1, 1, 1, 32, 32) and float(w.min()) == 1.0
    miss = (video - torch.zeros_like(video)).abs()                            # decoder that drops the mouth
    flat = torch.full_like(video, float(miss.mean()))                         # same plain error, spread out
    ratio = lambda e: float((w * e).mean() / w.mean()) / float(e.mean())      # noqa: E731
    assert ratio(miss) > 3 * ratio(flat)
    assert edge_weight(video, 0.0) == 1.0


def test_motion_weight_follows_what_moves():
    from lpm_rt.train.base import motion_weight
    video = torch.zeros(2, 3, 8, 16, 16)
    video[0, :, ::2, 4:6, 4:6] = 1.0                     # clip 0: a blinking 2x2 patch
    video[1] += 0.5                                      # clip 1: static
    w = motion_weight(video, 4.0)
    assert w.shape == (2, 1, 8, 16, 16)
    assert float(w[0, 0, 0, 4, 4]) > 10.0 and float(w[0, 0, 0, 0, 0]) == 1.0
    assert torch.equal(w[1], torch.ones_like(w[1]))      # nothing moves: plain loss
    assert motion_weight(video, 0.0) == 1.0


def test_motion_weighted_losses_run_and_decrease():
    cfg = preset("tiny")
    model = OnlineLPM(cfg).init_weights(0)
    batch = collate([BlobSource(cfg, 8).clip(i) for i in range(2)], cfg)
    lv = _fit(model.vae.parameters(), lambda g: vae_loss(model.vae, batch, g, edge=1.0, motion=4.0)["loss"], 15, 3e-3)
    assert lv[-1] < 0.8 * lv[0], f"vae loss {lv[0]:.4f} -> {lv[-1]:.4f}"
    x0, cond = encode_batch(model.vae, batch)
    s = cfg.stream
    lt = _fit(model.backbone.parameters(),
              lambda g: teacher_loss(model.backbone, x0, cond, g, s.ref_time_index, motion=4.0)["loss"], 15, 1e-3)
    assert lt[-1] < 0.8 * lt[0], f"teacher loss {lt[0]:.4f} -> {lt[-1]:.4f}"


def test_crop_batch_is_aligned_and_central():
    from lpm_rt.train.base import crop_batch
    cfg = preset("tiny")
    batch = collate([BlobSource(cfg, 8).clip(i) for i in range(2)], cfg)
    H = batch.video.shape[-1]
    seen = set()
    for seed in range(20):
        c = crop_batch(batch, H // 2, 8, torch.Generator().manual_seed(seed))
        assert c.video.shape[-2:] == (H // 2, H // 2) and c.ref_images.shape[-2:] == (H // 2, H // 2)
        # locate the crop: it is an exact sub-array of the frame at an 8-aligned offset
        hits = [(y, x) for y in range(0, H // 2 + 1, 8) for x in range(0, H // 2 + 1, 8)
                if torch.equal(batch.video[..., y:y + H // 2, x:x + H // 2], c.video)]
        assert hits and all(H // 8 <= y <= 3 * H // 8 for y, _ in hits), hits
        seen.add(hits[0])
        assert torch.equal(batch.ref_images[..., hits[0][0]:hits[0][0] + H // 2, hits[0][1]:hits[0][1] + H // 2],
                           c.ref_images)
    assert len(seen) > 1                                 # the offset is drawn, not fixed
    with pytest.raises(ValueError):
        crop_batch(batch, H // 2 + 4, 8, torch.Generator())


def test_audio_groups_split_the_audio_path():
    from lpm_rt.train.base import audio_groups
    net = OnlineLPM(preset("tiny")).backbone
    rest, audio = audio_groups(net, 10.0)
    names = {id(p): n for n, p in net.named_parameters()}
    got = sorted(names[id(p)] for p in audio["params"])
    assert audio["lr_mult"] == 10.0 and rest["lr_mult"] == 1.0
    assert got and all("audio" in n for n in got)
    assert any(n.startswith("audio_encoder.") for n in got) and any(".audio_attn.o." in n for n in got)
    assert len(audio["params"]) + len(rest["params"]) == len(list(net.parameters()))
    assert not any("audio" in names[id(p)] for p in rest["params"])


def test_flicker_ignores_still_errors_and_sees_changing_ones():
    from lpm_rt.train.base import flicker
    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 8, 6, 6, generator=g).cumsum(2)             # a clip that moves
    assert flicker(video, video) == 0
    offset = video + 0.3 * torch.randn(2, 3, 1, 6, 6, generator=g)          # the same error every frame
    assert flicker(offset, video) < 1e-6
    noisy = video + 0.3 * torch.randn(video.shape, generator=g)              # a new error every frame
    assert flicker(noisy, video) > 0.2


def test_vae_temporal_and_within_terms_are_added_temporal_trains():
    cfg = preset("tiny")
    model = OnlineLPM(cfg).init_weights(0)
    batch = collate([BlobSource(cfg, 8).clip(i) for i in range(2)], cfg)
    plain = vae_loss(model.vae, batch, torch.Generator().manual_seed(1))
    for term, key in (("temporal", "flicker"), ("within", "within")):      # --vae-temporal, --vae-within
        out = vae_loss(model.vae, batch, torch.Generator().manual_seed(1), **{term: 2.0})
        assert key not in plain and out[key] > 0
        assert torch.allclose(out["loss"], plain["loss"] + 2.0 * out[key])
    lv = _fit(model.vae.parameters(), lambda g: vae_loss(model.vae, batch, g, temporal=2.0)["loss"], 15, 3e-3)
    assert lv[-1] < 0.8 * lv[0], f"vae loss {lv[0]:.4f} -> {lv[-1]:.4f}"


def test_within_block_sees_motion_inside_a_latent_frame_only():
    from lpm_rt.train.base import within_block
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 8, 4, 4, generator=g)
    blocks = video.unflatten(2, (2, 4)).mean(3, keepdim=True)
    held = blocks.expand(-1, -1, -1, 4, -1, -1).flatten(2, 3)     # one image per latent frame
    assert within_block(video, video, 4) == 0.0
    assert within_block(held + 0.3, held, 4) < 1e-6                # offsets and block means: not its business
    miss = within_block(held, video, 4)                            # a decoder that draws no motion inside
    assert torch.isclose(miss, (video - held).abs().mean())
    w = torch.zeros(1, 1, 8, 4, 4)
    w[..., :2, :] = 1.0                                            # weights: only where they are
    assert torch.isclose(within_block(held, video, 4, w), (video - held)[..., :2, :].abs().mean())

