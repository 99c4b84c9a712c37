"""LPM-Bench-mini discriminates: ground truth near the top, the static reference at the floor."""

import json

import numpy as np

from lpm_rt.world.bench import METRICS, build_scenarios, face_detail, flicker, flicker_split, lip_sync_split, main
from _util import script


def test_bench_quick_discriminates(tmp_path):
    assert main(["--quick", "--seconds", "6", "--minutes", "0.1", "--out", str(tmp_path), "--vae", "demo"]) == 0
    res = json.loads((tmp_path / "bench_quality.json").read_text())
    gt, static = res["systems"]["ground-truth"], res["systems"]["static-reference"]
    assert set(METRICS) <= set(gt)
    assert gt["lip_sync_corr"] >= 0.8
    assert static["lip_sync_corr"] <= 0.2
    assert abs(gt["av_offset_ms"]) <= 1000 / 24
    assert gt["listen_motion_ratio"] > static["listen_motion_ratio"]
    assert gt["text_control_acc"] > static["text_control_acc"]
    assert res["analyzer"]["heldout_scenarios"]["mouth_open"]["corr"] > 0.8
    vae = res["systems"]["vae:demo"]                     # the ground truth through the demo's VAE
    assert 0.0 <= vae["flicker"] < 0.05 and vae["identity_drift"] < 0.5
    details = res["details"]
    assert details["ground-truth"]["detail_ratio"] == 1.0
    assert 0.7 < details["static-reference"]["detail_ratio"] < 1.3       # the same face, still
    assert details["ground-truth"]["lip_sync_block"] > 0.8 and details["ground-truth"]["lip_sync_within"] > 0.8
    for f in ("bench_quality.md", "metrics.png", "mouth_vs_audio.png"):
        assert (tmp_path / f).stat().st_size > 100


def test_face_detail_falls_with_blur_and_rises_with_noise():
    conv = build_scenarios(0, 0.05, True, 2.0)["scenarios"]["speaking"]
    frames = conv.render(128).astype(np.float32)
    p = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(p[:, i:i + 128, j:j + 128] for i in range(3) for j in range(3)) / 9     # 3x3 box at 128 px
    noisy = frames + np.random.default_rng(0).normal(0, 8, frames.shape)
    sharp = face_detail(frames.astype(np.uint8))
    assert face_detail(blurred.clip(0, 255).astype(np.uint8)) < 0.8 * sharp
    assert face_detail(noisy.clip(0, 255).astype(np.uint8)) > sharp
    assert face_detail(np.repeat(frames[:1], 12, 0).astype(np.uint8)) > 0.0


def test_lip_sync_split_tells_a_held_mouth_from_a_moving_one():
    rng = np.random.default_rng(0)
    gt = np.convolve(rng.random(400), np.ones(3) / 3, mode="same")        # mouth opening, frame by frame
    held = np.repeat(gt.reshape(-1, 4).mean(1), 4)                         # one mouth per 4-frame block
    assert np.allclose(lip_sync_split(gt, gt), 1.0)
    block, within = lip_sync_split(held + 0.01 * rng.random(400), gt)
    assert block > 0.95 and abs(within) < 0.2
    late = np.roll(gt, 4)                                                  # one block late: blocks decorrelate
    assert lip_sync_split(late, gt)[0] < 0.7
    assert lip_sync_split(np.zeros(400), gt) == (None, None)


def test_flicker_split_finds_jumps_between_latent_frames():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (10, 8, 8, 3)).astype(np.uint8)
    stepped = np.repeat(blocks, 4, axis=0)                                 # a new image every 4 frames
    edge, inside = flicker_split(stepped)
    assert edge > 0.1 and inside == 0.0
    phase = np.arange(1, 39) % 4                                           # centres of the 38 differences
    n_edge = np.isin(phase, (0, 3)).sum()
    assert np.isclose((n_edge * edge + (38 - n_edge) * inside) / 38, flicker(stepped), rtol=1e-5)
    shifted = np.concatenate([stepped[:2], stepped])                       # jumps off the latent grid
    assert flicker_split(shifted)[1] > 0.1
    noise = rng.integers(0, 256, (40, 8, 8, 3)).astype(np.uint8)           # no structure: both alike
    e, i = flicker_split(noise)
    assert 0.8 < e / i < 1.25
    assert flicker_split(stepped[:5]) == (None, None)


def test_face_detail_script_reports_every_row(tmp_path):
    out = tmp_path / "detail.json"
    assert script("face_detail").main(["--model", "tiny", "--seconds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"ground-truth", "model:tiny"}
    assert rows["ground-truth"]["detail_ratio"] == 1.0 and rows["ground-truth"]["abs_err_255"] == 0.0
    assert rows["model:tiny"]["abs_err_255"] > 10.0             # an untrained model draws noise, not the face


def test_nod_learnability_windows_end_on_their_own_frame(tmp_path):
    import torch
    mod = script("nod_learnability")
    mel = torch.arange(3 * 16 * 2, dtype=torch.float32).reshape(3, 16, 2)
    w = mod._windows(mel, 2)                               # [previous | own], oldest first
    assert w.shape == (3, 32, 2)
    assert torch.equal(w[1, 16:], mel[1]) and torch.equal(w[1, :16], mel[0])
    assert (w[0, :16] == float(np.log(1e-5))).all()         # before the clip: silence
    out = tmp_path / "nod.json"
    assert mod.main(["--train-clips", "2", "--test-clips", "2", "--seconds", "4", "--steps", "3",
                     "--windows", "1", "3", "--reader", "conv", "attn", "tconv-attn", "--batch", "16",
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())["by_window"]
    assert set(res) == {"1", "3", "1 attn", "3 attn", "1 tconv-attn", "3 tconv-attn"}
    assert all(set(r) == {"pitch", "nod", "pitch_rolled", "pitch_train"} for r in res.values())
    for k in (1, 3):                                       # the model-shaped readers read k frames' tokens
        for temporal in (False, True):
            net = mod.AttnReader(k, temporal)
            assert net(torch.zeros(2, 16 * k, mod.N_MELS)).shape == (2, 2)


def test_latent_jitter_script_compares_streamed_and_true_latents(tmp_path):
    out = tmp_path / "jitter.json"
    assert script("latent_jitter").main(["--model", "tiny", "--seconds", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["latent_frames"] == 6                                  # 24 frames / 4 per latent frame
    gt, model = res["rows"]["ground-truth"], res["rows"]["model"]
    assert gt["dz"] < 0.05 and gt["flicker"] < 0.01                   # the world's clip is smooth
    assert model["dz"] > 10 * gt["dz"]                                # an untrained model is not
    for r in (gt, model):
        assert r["flicker_boundary"] is not None and r["dz_border"] >= 0
