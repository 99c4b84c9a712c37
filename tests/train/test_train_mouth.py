"""Mouth-weighted losses: the world's mouth positions reach the loss weights at the right place."""

import numpy as np
import pytest
import torch

from lpm_rt.config import preset
from lpm_rt.train.base import crop_batch, weighted_mse
from lpm_rt.train.mouth import HeadProbe, MouthProbe, latent_mouth_weight, latent_opening, mouth_weight, sync_loss
from lpm_rt.train.data import Clip, WorldSource, collate
from lpm_rt.world import Character, Scene
from lpm_rt.world.render import FaceState, draw, landmarks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mouth_landmark_is_where_the_mouth_is_drawn(seed):
    """Open vs closed mouth on a turned, tilted head: the pixels that change are centred on the
    landmark (an x/y swap or a scale slip would put it on the cheek)."""
    rng = np.random.default_rng(seed)
    ch, scene = Character.random(seed), Scene.random(seed)
    kw = dict(yaw=float(rng.uniform(-20, 20)), pitch=float(rng.uniform(-10, 10)), roll=float(rng.uniform(-8, 8)))
    h = w = 128
    closed = draw(ch, scene, FaceState(mouth_open=0.0, **kw), h, w).astype(np.float32)
    opened = draw(ch, scene, FaceState(mouth_open=1.0, mouth_shape="open", **kw), h, w).astype(np.float32)
    d = np.abs(opened - closed).sum(-1)
    ys, xs = np.nonzero(d > 30)
    assert len(xs) > 10
    mx, my = landmarks(ch, FaceState(mouth_open=0.0, **kw), h, w)["mouth"]
    assert abs(np.average(xs, weights=d[ys, xs]) - mx) < 2.0 and abs(np.average(ys, weights=d[ys, xs]) - my) < 2.5


def test_world_clips_carry_mouth_positions():
    cfg = preset("tiny")
    clip = WorldSource(cfg, 8, modes=("speaking",)).clip(3)
    assert clip.mouth.shape == (8, 3)
    assert np.all((clip.mouth[:, :2] > 8) & (clip.mouth[:, :2] < 56))    # inside the 64 x 64 frame
    assert np.all((clip.mouth[:, 2] >= 0) & (clip.mouth[:, 2] <= 1)) and clip.mouth[:, 2].std() > 0.05   # speaking
    b = collate([clip], cfg)
    assert b.mouth.shape == (1, 8, 3) and torch.allclose(b.mouth[0], torch.from_numpy(clip.mouth))


def test_collate_scales_mouth_with_the_frame():
    cfg = preset("tiny")                                                 # 64 x 64
    a = np.zeros(4000 * 2, np.float32)
    big = Clip(np.zeros((4, 128, 128, 3), np.uint8), a, a, 24000, mouth=np.array([[40.0, 80.0, 0.5]] * 4))
    assert torch.allclose(collate([big], cfg).mouth, torch.tensor([[[20.0, 40.0, 0.5]] * 4]))   # opening kept
    none = Clip(np.zeros((4, 64, 64, 3), np.uint8), a, a, 24000)
    assert collate([big, none], cfg).mouth is None                      # unknown for one: unknown


def test_mouth_weight_peaks_at_the_mouth():
    mouth = torch.tensor([[[20.0, 44.0, 0.0]] * 4 + [[36.0, 12.0, 1.0]] * 4])   # (1, T=8, 3): moves after frame 3
    w = mouth_weight(mouth, 9.0, (64, 64))                               # pixel grid
    assert w.shape == (1, 1, 8, 64, 64)
    assert np.unravel_index(int(w[0, 0, 0].argmax()), (64, 64)) in {(44, 20), (43, 20), (44, 19), (43, 19)}
    assert float(w.max()) <= 10.0 and float(w[0, 0, 0, 0, 63]) == pytest.approx(1.0)
    lw = mouth_weight(mouth, 9.0, (64, 64), stride=8, temporal=4)        # latent grid: 2 frames of 8 x 8
    assert lw.shape == (1, 1, 2, 8, 8)
    assert np.unravel_index(int(lw[0, 0, 0].argmax()), (8, 8)) == (5, 2)
    assert np.unravel_index(int(lw[0, 0, 1].argmax()), (8, 8)) == (1, 4)
    assert mouth_weight(None, 0.0, (64, 64)) == 1.0
    with pytest.raises(ValueError, match="mouth positions"):
        mouth_weight(None, 1.0, (64, 64))
    cfg = preset("tiny")
    assert torch.equal(latent_mouth_weight(cfg.model, mouth, 9.0, (64, 64)), lw)


def test_crop_moves_the_mouth_with_the_pixels():
    cfg = preset("tiny")
    b = collate([WorldSource(cfg, 8, modes=("speaking",)).clip(i) for i in range(2)], cfg)
    full = mouth_weight(b.mouth, 5.0, (64, 64))
    for seed in range(4):
        c = crop_batch(b, 32, 8, torch.Generator().manual_seed(seed))
        hits = [(y, x) for y in range(0, 33, 8) for x in range(0, 33, 8)
                if torch.equal(b.video[..., y:y + 32, x:x + 32], c.video)]
        y, x = hits[0]
        # same bump, same pixels (the radius follows the crop's size, so compare peak positions)
        got = mouth_weight(c.mouth, 5.0, (32, 32))
        for t in (0, 7):
            want = np.unravel_index(int(full[0, 0, t].argmax()), (64, 64))
            peak = np.unravel_index(int(got[0, 0, t].argmax()), (32, 32))
            if 0 <= want[0] - y < 32 and 0 <= want[1] - x < 32:
                assert (peak[0] + y, peak[1] + x) == want


def test_weighted_mse_puts_the_error_at_the_mouth():
    target = torch.zeros(1, 4, 2, 8, 8)
    mouth = torch.tensor([[[20.0, 44.0, 0.0]] * 8])
    w = mouth_weight(mouth, 30.0, (64, 64), stride=8, temporal=4)
    at_mouth, elsewhere = target.clone(), target.clone()
    at_mouth[..., 5, 2] = 1.0
    elsewhere[..., 0, 7] = 1.0
    assert weighted_mse(at_mouth, target) == weighted_mse(elsewhere, target)          # plain: the same
    assert weighted_mse(at_mouth, target, w) > 10 * weighted_mse(elsewhere, target, w)
    assert weighted_mse(at_mouth, target, 1.0) == torch.nn.functional.mse_loss(at_mouth, target)


def test_pool_returns_the_clips_mouths():
    from lpm_rt.model.online import OnlineLPM
    from lpm_rt.train.base import encode_batch
    from lpm_rt.train.data import EncodedPool
    cfg = preset("tiny")
    vae = OnlineLPM(cfg).init_weights(0).vae.eval()
    src = WorldSource(cfg, 8, modes=("speaking",))
    for size in (3, 0):
        pool = EncodedPool(src, cfg, lambda b: encode_batch(vae, b), size=size)
        z, cond, mouth = pool.batch([4, 2], mouth=True)
        want = collate([src.clip(4 % size if size else 4), src.clip(2)], cfg).mouth
        assert torch.allclose(mouth, want)
        assert len(pool.batch([4], mouth=False)) == 2


@pytest.mark.parametrize("opt", ["--mouth", "--sync", "--nod"])
def test_mouth_options_need_clips_that_know_the_mouth(tmp_path, opt):
    from lpm_rt.train import main
    args = ["base", "--preset", "tiny", "--steps", "1", "--vae-steps", "0", "--out", str(tmp_path / "r"),
            "--source", "blobsrc:make", "--batch", "1", "--frames", "4", opt, "10"]
    with pytest.raises(ValueError, match="mouth positions"):
        main(args)


def test_mouth_probe_reads_the_opening_from_encoder_latents():
    """A probe fitted on some clips reads the opening of others from where their mouth is: a
    latent made of a bump whose size is the opening, at positions that differ per clip."""
    g = torch.Generator().manual_seed(0)
    size, T = (64, 64), 4

    def clip(n):
        mouth = torch.zeros(n, 8, 3)
        mouth[..., 0] = 20 + 24 * torch.rand(n, 1, generator=g)       # x, fixed per clip
        mouth[..., 1] = 20 + 24 * torch.rand(n, 1, generator=g)
        mouth[..., 2] = torch.rand(n, 2, generator=g).repeat_interleave(4, 1)   # opening per latent frame
        c = (torch.arange(8) + 0.5) * 8 - 0.5                                   # cell centres, pixels
        d2 = (c.view(1, 1, 8) - mouth[:, 0, 0, None, None]) ** 2 + (c.view(1, 8, 1) - mouth[:, 0, 1, None, None]) ** 2
        bump = torch.exp(-d2 / (2 * 8.0 ** 2)).view(n, 1, 1, 8, 8)              # one cell wide, at the mouth
        z = torch.randn(n, 4, 2, 8, 8, generator=g) * 0.15 + bump * mouth[:, ::4, 2].view(n, 1, 2, 1, 1)
        return z, mouth

    fit = [clip(8) for _ in range(4)]
    probe = MouthProbe(size, T).fit([f[0] for f in fit], [f[1] for f in fit], lam=1.0)
    z, mouth = clip(16)
    got, want = probe.read(z, mouth).flatten(), mouth[:, ::4, 2].flatten()
    r = float(torch.corrcoef(torch.stack([got, want]))[0, 1])
    assert r > 0.9
    shuffled = probe.read(z, mouth.roll(1, 0)).flatten()                # read at another clip's mouth
    assert float(torch.corrcoef(torch.stack([shuffled, want]))[0, 1]) < r - 0.25
    # the sync loss is ~0 for the true latents, ~2 (in units of the reading's variance) for others
    z2 = z.clone().requires_grad_(True)
    assert float(sync_loss(probe, z, z, mouth)) < 1e-6
    l = sync_loss(probe, z2.roll(1, 0), z, mouth)
    assert float(l.detach()) > 0.5
    l.backward()
    assert z2.grad.abs().sum() > 0                                       # differentiable in the prediction


def _nodding_clips(g, n, look=0.0):
    """Latents of a blob (the face) that moves up and down by dy per latent frame, at a position
    that differs per clip, plus per-clip 'looks' (a constant offset of size ``look``); the mouth
    labels move with it, opening unrelated."""
    Fr = 3
    base = 20 + 24 * torch.rand(n, 1, 2, generator=g)                         # (x, y) per clip, pixels
    dy = 8 * torch.rand(n, Fr, generator=g) - 4                                # +-4 px, one per latent frame
    mouth = torch.zeros(n, Fr * 4, 3)
    mouth[..., :2] = base
    mouth[..., 1] += dy.repeat_interleave(4, 1)
    mouth[..., 2] = torch.rand(n, Fr * 4, generator=g)
    c = (torch.arange(8) + 0.5) * 8 - 0.5                                      # cell centres, pixels
    y = mouth[:, ::4, 1]                                                       # (n, F)
    d2 = (c.view(1, 1, 1, 8) - base[:, :, None, None, 0]) ** 2 + (c.view(1, 1, 8, 1) - y[..., None, None]) ** 2
    blob = torch.exp(-d2 / (2 * 6.0 ** 2))                                     # (n, F, 8, 8)
    z = torch.randn(n, 4, Fr, 8, 8, generator=g) * 0.05 + look * torch.randn(n, 4, 1, 8, 8, generator=g)
    z[:, 0] += blob
    return z, mouth, dy - dy.mean(1, keepdim=True)


def test_head_probe_reads_the_head_position_within_a_clip():
    """A probe fitted on some clips reads how far the head is above or below its clip mean in
    others: sampled at the clip's mean position, relative to the clip's mean latent (so a clip's
    own looks cancel); the mouth opening does not enter it."""
    g = torch.Generator().manual_seed(0)
    fit = [_nodding_clips(g, 8) for _ in range(4)]
    probe = HeadProbe((64, 64), 4).fit([f[0] for f in fit], [f[1] for f in fit])
    assert probe.var == pytest.approx(float(torch.cat([f[2].flatten() for f in fit]).var()), rel=1e-5)
    z, mouth, want = _nodding_clips(g, 16, look=1.0)
    got = probe.read(z, mouth)
    assert got.shape == want.shape
    r = float(torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1])
    assert r > 0.9
    assert got.mean(1).abs().max() < 1e-3                                      # relative to the clip's mean
    moved = mouth.clone()
    moved[..., 2] = torch.rand(moved[..., 2].shape, generator=g)               # another opening: same reading
    assert torch.allclose(probe.read(z, moved), got, atol=1e-5)
    elsewhere = probe.read(z, mouth.roll(1, 0)).flatten()                      # read at another clip's head
    assert float(torch.corrcoef(torch.stack([elsewhere, want.flatten()]))[0, 1]) < r - 0.25
    still = z.mean(2, keepdim=True).expand_as(z).contiguous()                  # the head does not move
    assert float(sync_loss(probe, still, z, mouth, norm=probe.var)) > 0.25
    assert float(sync_loss(probe, z, z, mouth, norm=probe.var)) < 1e-8


def test_teacher_loss_adds_the_sync_term():
    from lpm_rt.model.online import OnlineLPM
    from lpm_rt.train.base import encode_batch, teacher_loss
    cfg = preset("tiny")
    model = OnlineLPM(cfg).init_weights(0)
    b = collate([WorldSource(cfg, 8, modes=("speaking",)).clip(i) for i in range(4)], cfg)
    x0, cond = encode_batch(model.vae, b)
    probe = MouthProbe((64, 64), 4).fit([x0], [b.mouth])
    s = cfg.stream
    plain = teacher_loss(model.backbone, x0, cond, torch.Generator().manual_seed(0), s.ref_time_index)
    out = teacher_loss(model.backbone, x0, cond, torch.Generator().manual_seed(0), s.ref_time_index,
                       sync=2.0, probe=probe, mouth=b.mouth)
    assert torch.allclose(out["flow"], plain["loss"])                    # same noise, same flow term
    assert float(out["sync"]) > 0 and torch.allclose(out["loss"], out["flow"] + 2.0 * out["sync"])
    out["loss"].backward()
    assert model.backbone.blocks[0].audio_attn.o.weight.grad.abs().sum() > 0
    head = HeadProbe((64, 64), 4).fit([x0], [b.mouth])
    both = teacher_loss(model.backbone, x0, cond, torch.Generator().manual_seed(0), s.ref_time_index,
                        sync=2.0, probe=probe, mouth=b.mouth, nod=3.0, head=head)
    assert torch.allclose(both["flow"], plain["loss"]) and torch.allclose(both["sync"], out["sync"])
    assert float(both["nod"]) > 0
    assert torch.allclose(both["loss"], both["flow"] + 2.0 * both["sync"] + 3.0 * both["nod"])
    only = teacher_loss(model.backbone, x0, cond, torch.Generator().manual_seed(0), s.ref_time_index,
                        mouth=b.mouth, nod=3.0, head=head)
    assert "sync" not in only and torch.allclose(only["loss"], only["flow"] + 3.0 * only["nod"])
    # --nod-high: the head term on clips drawn at sigma in [0.9, 1] alone, rebuilt here step by step
    from lpm_rt.train.flow import add_noise, randn, sample_sigma, velocity
    from lpm_rt.train.mouth import sync_loss
    high = teacher_loss(model.backbone, x0, cond, torch.Generator().manual_seed(0), s.ref_time_index,
                        mouth=b.mouth, nod=3.0, head=head, nod_high=1.0)
    g = torch.Generator().manual_seed(0)
    sample_sigma(4, g)
    assert bool((torch.rand(4, generator=g) < 1.0).all())
    sig = 0.9 + 0.1 * torch.rand(4, generator=g)
    xs = add_noise(x0, randn(x0.shape, g, x0.device), sig)
    with torch.no_grad():
        v = velocity(model.backbone, xs, (1000.0 * sig)[:, None].expand(4, x0.shape[2]), cond,
                     ref_time_index=s.ref_time_index)
        want = sync_loss(head, xs - sig.view(-1, 1, 1, 1, 1) * v, x0, b.mouth, norm=head.var)
    assert torch.allclose(high["nod"], want, rtol=1e-4) and not torch.allclose(high["flow"], plain["loss"])
    none = teacher_loss(model.backbone, x0, cond, torch.Generator().manual_seed(0), s.ref_time_index,
                        mouth=b.mouth, nod=3.0, head=head, nod_high=1e-9)   # no clip drawn high: no head term
    assert float(none["nod"]) == 0.0 and torch.allclose(none["loss"], none["flow"])


def test_base_nod_logs_the_head_term(tmp_path):
    """`train base --nod` on world clips: the head-motion term is in the loss and the log."""
    from lpm_rt.train import main
    out = tmp_path / "r"
    assert main(["base", "--preset", "tiny", "--steps", "2", "--vae-steps", "0", "--out", str(out), "--batch", "1",
                 "--frames", "4", "--warmup", "1", "--pool", "2", "--nod", "1.5"]) == 0
    import json
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rec = [r for r in rec if r["stage"] == "teacher"]
    assert len(rec) == 2 and all(r["nod"] > 0 for r in rec)
    assert all(r["loss"] == pytest.approx(r["flow"] + 1.5 * r["nod"], rel=1e-5) for r in rec)
    with pytest.raises(SystemExit):
        main(["base", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "x"), "--nod", "-1"])
    for bad in (["--nod-high", "0.5"], ["--nod", "1", "--nod-high", "1.5"]):    # needs --nod; a fraction
        with pytest.raises(SystemExit):
            main(["base", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "x"), *bad])


def test_audio_gap_script_runs_and_reports_every_track():
    import importlib.util
    from pathlib import Path
    from lpm_rt.model.online import OnlineLPM
    path = Path(__file__).resolve().parents[2] / "scripts" / "audio_gap.py"
    spec = importlib.util.spec_from_file_location("audio_gap", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.audio_gap(OnlineLPM(preset("tiny")).init_weights(0).eval(), clips=2, frames=3, sigmas=(0.5,))
    for k in ("right", "rolled", "silence"):
        assert res[k]["frame"] > 0 and res[k]["mouth"] > 0 and -1 <= res[k]["lip_sync"] <= 1
    assert -1 <= res["probe_on_data"] <= 1 and np.isfinite(res["gap_mouth"])
    lags = res["right"]["lip_sync_by_lag"]
    assert set(lags) == {"-1", "0", "1"} and lags["0"] == res["right"]["lip_sync"]
    assert res["rolled"]["lip_sync_by_lag"]["0"] == res["rolled"]["lip_sync"] and res["read_sigma"] == 0.9
    blind = mod.audio_gap(OnlineLPM(preset("tiny")).init_weights(0).eval(), clips=2, frames=3, sigmas=(0.5,),
                          read_sigma=1.0)                    # the reading from the conditioning alone
    assert blind["read_sigma"] == 1.0 and blind["right"]["lip_sync"] != res["right"]["lip_sync"]
    assert blind["right"]["frame"] == res["right"]["frame"]  # the flow figures do not depend on it
    nods = mod.audio_gap(OnlineLPM(preset("tiny")).init_weights(0).eval(), clips=2, frames=3, sigmas=(0.5,),
                         track="listener")                   # the partner's track, the head probe
    assert nods["track"] == "listener" and "lip_sync" not in nods["right"]
    assert -1 <= nods["right"]["head_sync"] <= 1 and set(nods["right"]["head_sync_by_lag"]) == {"-1", "0", "1"}
    assert nods["right"]["frame"] != res["right"]["frame"]  # other clips (listening, not speaking)
    with pytest.raises(ValueError, match="track"):
        mod.audio_gap(None, track="partner")
    # lag > 0: the reading trails the labels (a late mouth peaks there), < 0: it leads
    ref = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    late = torch.cat([torch.zeros(3, 1), ref[:, :-1]], 1)
    assert mod._within_corr(late, ref, 1) == pytest.approx(1.0) and mod._within_corr(late, ref, -1) < 0.5
    assert mod._within_corr(ref[:, 1:], ref[:, :-1], -1) == pytest.approx(1.0)


def test_sync_loss_in_units_of_the_data_variance():
    """norm=probe.var divides by the opening's variance over the fitting clips, not the batch's:
    on a batch of quiet clips (mouth still) the batch form blows up, the data form does not."""
    g = torch.Generator().manual_seed(1)
    n, size, T = 8, (64, 64), 4
    mouth = torch.zeros(n, 8, 3)
    mouth[..., :2] = 32.0
    mouth[..., 2] = torch.rand(n, 8, generator=g)
    z = torch.randn(n, 4, 2, 8, 8, generator=g)
    z[:, 0, :, 3:5, 3:5] += mouth[:, ::4, 2].view(n, 2, 1, 1) * 3
    probe = MouthProbe(size, T).fit([z], [mouth], lam=1.0)
    assert probe.var == pytest.approx(float(latent_opening(mouth, T).var()))
    quiet = z[:1].repeat(n, 1, 1, 1, 1) + 0.01 * torch.randn(z.shape, generator=g)   # the same still clip
    quiet[:, 0, :, 3:5, 3:5] = 0.2
    pred = quiet + 0.05 * torch.randn(quiet.shape, generator=g)
    err = float((probe.read(pred, mouth) - probe.read(quiet, mouth)).pow(2).mean())
    assert float(sync_loss(probe, pred, quiet, mouth, norm=probe.var)) == pytest.approx(err / probe.var, rel=1e-5)
    assert float(sync_loss(probe, pred, quiet, mouth)) > 10 * float(sync_loss(probe, pred, quiet, mouth, norm=probe.var))
