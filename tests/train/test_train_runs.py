"""End-to-end runs of the trainer CLI on the tiny preset: base, the four distill stages, resume
after a simulated kill, and loading the result with lpm_rt.load."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lpm_rt
from lpm_rt.train import main
from lpm_rt.train.loop import optim_from_tensors, optim_to_tensors

COMMON = ["--source", "blobsrc:make", "--batch", "1", "--frames", "4", "--warmup", "1"]
DISTILL = ["--steps", "2", "--ode-steps", "3", "--fake-updates", "1", "--long-factor", "2", "--ckpt-every", "2"]


def _metrics(d):
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    torch.set_num_threads(1)
    assert main(["base", "--preset", "tiny", "--steps", "3", "--vae-steps", "2", "--out", str(out)] + COMMON) == 0
    return out


def test_base_run_writes_a_loadable_teacher(teacher):
    recs = _metrics(teacher)
    assert [(r["stage"], r["step"]) for r in recs] == [("vae", 0), ("vae", 1), ("teacher", 0), ("teacher", 1),
                                                      ("teacher", 2)]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 and r["seconds"] >= 0 for r in recs)
    meta = json.loads((teacher / "config.json").read_text())
    assert meta["role"] == "base" and meta["trained"] is True
    assert "blocks.0.self_attn.q.weight" in load_file(str(teacher / "backbone.safetensors"))
    av = lpm_rt.load(str(teacher))
    assert av.trained and av.spec.width == 64


def _stream(out):
    av = lpm_rt.load(str(out))
    img = np.full((64, 64, 3), 120, np.uint8)
    with av.open_session(references=[img], prompt="smile", seed=0) as sess:
        t = np.arange(12000) / 24000
        sess.push_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000)
        sess.flush()
        return [f.image for f in sess.frames()]


def test_distill_stages_resume_and_stream(teacher, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["distill", "--teacher", str(teacher)] + DISTILL + COMMON
    assert main(args + ["--out", str(full)]) == 0
    # a kill after 3 steps: ode_init (2 steps, checkpointed) + 1 dmd step that is lost
    assert main(args + ["--out", str(killed), "--stop-after", "3"]) == 3
    assert json.loads((killed / "ckpt" / (killed / "ckpt" / "LATEST").read_text() / "state.json").read_text()) \
        == {"stage": "ode_init", "step": 2, "done": ["ode_init"]}
    assert main(args + ["--out", str(killed)]) == 0
    rf, rk = _metrics(full), _metrics(killed)
    stages = [(r["stage"], r["step"]) for r in rf]
    assert stages == [(s, i) for s in ("ode_init", "dmd", "refiner", "long") for i in range(2)]
    assert [(r["stage"], r["step"]) for r in rk] == stages
    for a, b in zip(rf, rk):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(abs(a["loss"]), 1e-3), (a, b)
    assert {"dmd_grad", "fake_loss"} <= set(rf[2]) and "drift" in rf[-1] and "coarse_tf" in rf[4]
    for part in ("backbone", "refiner"):
        wa, wb = load_file(str(full / f"{part}.safetensors")), load_file(str(killed / f"{part}.safetensors"))
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), (part, k)
    # training moved the student and the refiner away from the teacher
    t = load_file(str(teacher / "backbone.safetensors"))
    s = load_file(str(full / "backbone.safetensors"))
    assert any(not torch.equal(t[k], s[k]) for k in t)
    frames = _stream(full)
    assert len(frames) == 12 and frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    assert json.loads((full / "config.json").read_text())["role"] == "online"


def test_optimizer_state_roundtrip_without_pickle(tmp_path):
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    tensors, meta = optim_to_tensors(opt)
    save_file(tensors, str(tmp_path / "o.safetensors"))
    tensors, meta = load_file(str(tmp_path / "o.safetensors")), json.loads(json.dumps(meta))
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.5)
    optim_from_tensors(opt2, tensors, meta)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.param_groups[0]["lr"] == 1e-2
    for o, w in ((opt, p), (opt2, q)):
        o.zero_grad()
        (w ** 2).sum().backward()
        o.step()
    assert torch.equal(p, q)


def test_export_fp16_halves_and_loads(teacher, tmp_path):
    assert main(["export", "--src", str(teacher), "--out", str(tmp_path / "ship")]) == 0
    a = load_file(str(teacher / "backbone.safetensors"))
    b = load_file(str(tmp_path / "ship" / "backbone.safetensors"))
    assert all(b[k].dtype == torch.float16 for k in b if b[k].is_floating_point())
    size = lambda d: (d / "backbone.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "ship") < 0.6 * size(teacher)
    assert max((a[k] - b[k].float()).abs().max() for k in a) < 1e-2
    meta = json.loads((tmp_path / "ship" / "config.json").read_text())
    assert meta["role"] == "base" and meta["weights_dtype"] == "fp16"
    assert lpm_rt.load(str(tmp_path / "ship")).trained


def test_teacher_sampler_windows(teacher):
    """Base LPM sampled offline: window-by-window ODE solves cover any length, frames are uint8 of
    the preset's size, the result is a function of the seed, and the audio conditions it."""
    from lpm_rt.train.sample import TeacherSampler

    sampler = TeacherSampler(str(teacher), steps=2, window=2)
    sr, n = 16000, 21                                                   # 21 frames: 3 windows of 8
    t = np.arange(n * sr // 24 + sr) / sr
    spk = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    refs = [(np.full((64, 64, 3), 90, np.uint8), "global")]
    a = sampler.render(spk, np.zeros_like(spk), sr, n, "smile", refs)
    assert a.shape == (n, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, sampler.render(spk, np.zeros_like(spk), sr, n, "smile", refs))
    b = sampler.render(np.zeros_like(spk), np.zeros_like(spk), sr, n, "smile", refs)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0


def test_teacher_sampler_reads_each_window_audio_only(teacher, monkeypatch):
    """Each window's mel comes from its own audio (1 s of context before, 0.1 s after), not from the
    rest of the conversation: a long tail of audio after the rendered frames changes nothing, and
    the audio each window resamples stays bounded however long the conversation (a 10-minute
    render resampled the whole remainder every window)."""
    import lpm_rt.train.sample as S

    lens = []
    tm = S._track_mel

    def spy(audio, lead, rate, frames, cfg):
        lens.append(len(audio))
        return tm(audio, lead, rate, frames, cfg)

    monkeypatch.setattr(S, "_track_mel", spy)
    sampler = S.TeacherSampler(str(teacher), steps=2, window=2)
    sr, n = 16000, 21
    t = np.arange(n * sr // 24 + sr) / sr
    spk = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    refs = [(np.full((64, 64, 3), 90, np.uint8), "global")]
    a = sampler.render(spk, np.zeros_like(spk), sr, n, "smile", refs)
    tail = np.random.default_rng(0).uniform(-0.5, 0.5, 120 * sr).astype(np.float32)
    lens.clear()
    b = sampler.render(np.concatenate([spk, tail]), np.zeros(len(spk) + len(tail), np.float32), sr, n, "smile", refs)
    assert np.array_equal(a, b)
    window_s = 2 * 4 / 24                                           # 2 latent frames of 4 video frames
    assert len(lens) == 6 and max(lens) <= int((1 + window_s + 0.1) * sr) + 1


def test_base_init_warm_starts_from_a_model_dir(teacher, tmp_path):
    """--init copies the VAE and backbone of a model directory (no steps: the published model
    equals it, the VAE up to the latent-scale fold, which is ~1 for an already folded VAE)."""
    out = tmp_path / "cont"
    assert main(["base", "--preset", "tiny", "--steps", "0", "--vae-steps", "0", "--init", str(teacher),
                 "--out", str(out)] + COMMON) == 0
    for part, tol in (("backbone", 0.0), ("vae", 1e-2)):
        a, b = load_file(str(teacher / f"{part}.safetensors")), load_file(str(out / f"{part}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=tol, atol=tol * float(a[k].abs().max()), msg=k)
    with pytest.raises(ValueError, match="preset"):
        main(["base", "--preset", "demo", "--steps", "0", "--vae-steps", "0", "--init", str(teacher),
              "--out", str(tmp_path / "bad")] + COMMON)


def test_vae_freeze_encoder_trains_only_the_decoder(teacher, tmp_path):
    """--vae-freeze-encoder: the encoder (the latent space the backbone was trained in) comes
    out bit-identical, the decoder moves, the backbone is the --init one."""
    out = tmp_path / "dec"
    assert main(["base", "--preset", "tiny", "--steps", "1", "--vae-steps", "3", "--vae-freeze-encoder",
                 "--init", str(teacher), "--out", str(out), "--lr", "0"] + COMMON) == 0
    a, b = load_file(str(teacher / "vae.safetensors")), load_file(str(out / "vae.safetensors"))
    enc = [k for k in a if k.startswith("enc")]
    dec = [k for k in a if k.startswith("dec")]
    assert enc and dec
    assert all(torch.equal(a[k], b[k]) for k in enc)
    assert any(not torch.equal(a[k], b[k]) for k in dec)
    with pytest.raises(SystemExit):                         # nothing to keep without --init
        main(["base", "--preset", "tiny", "--steps", "0", "--vae-freeze-encoder", "--out", str(tmp_path / "x")] + COMMON)


def test_vae_fresh_decoder_keeps_only_the_encoder(teacher, tmp_path):
    """--vae-fresh-decoder: the encoder is --init's bit for bit, the decoder starts from fresh
    weights (the preset's init at --seed), not --init's."""
    from lpm_rt.config import preset
    from lpm_rt.model.online import OnlineLPM
    out = tmp_path / "fresh"
    assert main(["base", "--preset", "tiny", "--steps", "0", "--vae-steps", "0", "--vae-freeze-encoder",
                 "--vae-fresh-decoder", "--init", str(teacher), "--out", str(out)] + COMMON) == 0
    a, b = load_file(str(teacher / "vae.safetensors")), load_file(str(out / "vae.safetensors"))
    init = OnlineLPM(preset("tiny")).init_weights(0).vae.state_dict()
    for k in a:
        if k.startswith("enc"):
            assert torch.equal(a[k], b[k]), k
        else:
            assert not torch.equal(a[k], b[k]) and torch.equal(b[k], init[k].to(b[k].dtype)), k
    with pytest.raises(SystemExit):                         # a fresh decoder for which latent space?
        main(["base", "--preset", "tiny", "--steps", "0", "--vae-fresh-decoder", "--init", str(teacher),
              "--out", str(tmp_path / "x")] + COMMON)


def test_refiner_dmd_matches_distributions_on_free_outputs(teacher, tmp_path):
    """--refiner-dmd adds the DMD loss on the refiner's free-running outputs, with the fake score
    updated on them: logged, finite, and it changes the refiner the regression losses alone give."""
    args = ["distill", "--teacher", str(teacher), "--init-steps", "0", "--dmd-steps", "0", "--long-steps", "0",
            "--refiner-steps", "2"] + DISTILL + COMMON
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    assert main(args + ["--out", str(tmp_path / "dmd"), "--refiner-dmd", "1.0"]) == 0
    plain = [r for r in _metrics(tmp_path / "plain") if r["stage"] == "refiner"]
    dmd = [r for r in _metrics(tmp_path / "dmd") if r["stage"] == "refiner"]
    assert len(dmd) == 2 and all(np.isfinite(r["refined_dmd"]) and np.isfinite(r["fake_loss"]) for r in dmd)
    assert "refined_dmd" not in plain[0]
    wa, wb = (load_file(str(tmp_path / d / "refiner.safetensors")) for d in ("plain", "dmd"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_distill_from_a_run_redoes_its_later_stages(teacher, tmp_path):
    """--from DIR --restart-at STAGE equals reopening STAGE in a copy of DIR's last checkpoint: the
    same weights, step for step; the earlier stages are not run again and DIR is left as it was."""
    import shutil
    base = ["distill", "--teacher", str(teacher), "--long-steps", "0"] + DISTILL + COMMON
    first = tmp_path / "first"
    assert main(base + ["--init-steps", "1", "--dmd-steps", "1", "--refiner-steps", "1", "--out", str(first)]) == 0
    before = {p.name: p.read_bytes() for p in first.glob("*.safetensors")}
    redo = base + ["--init-steps", "1", "--dmd-steps", "1", "--refiner-steps", "2"]
    manual = tmp_path / "manual"                       # the same thing by hand: reopen the refiner stage
    shutil.copytree(first, manual)
    ck = manual / "ckpt" / (manual / "ckpt" / "LATEST").read_text().strip()
    (ck / "state.json").write_text(json.dumps({"stage": "refiner", "step": 0, "done": ["ode_init", "dmd"]}))
    assert main(redo + ["--out", str(manual)]) == 0
    again = tmp_path / "again"
    assert main(redo + ["--from", str(first), "--restart-at", "refiner", "--out", str(again)]) == 0
    assert [(r["stage"], r["step"]) for r in _metrics(again)] == [("refiner", 0), ("refiner", 1)]
    for part in ("backbone", "refiner"):
        a, b = load_file(str(manual / f"{part}.safetensors")), load_file(str(again / f"{part}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    a, f = load_file(str(again / "refiner.safetensors")), load_file(str(first / "refiner.safetensors"))
    assert any(not torch.equal(a[k], f[k]) for k in a)
    assert {p.name: p.read_bytes() for p in first.glob("*.safetensors")} == before
    for bad in (["--from", str(first)], ["--restart-at", "dmd"], ["--from", str(teacher), "--restart-at", "dmd"]):
        with pytest.raises(SystemExit):
            main(redo + bad + ["--out", str(tmp_path / "x")])


def test_export_takes_a_decoder_of_the_same_latent_space(teacher, tmp_path):
    """export --vae-from: the VAE of a decoder-only fine-tune replaces SRC's; one with another
    encoder is refused."""
    dec = tmp_path / "dec"
    assert main(["base", "--preset", "tiny", "--steps", "0", "--vae-steps", "2", "--vae-freeze-encoder",
                 "--init", str(teacher), "--out", str(dec)] + COMMON) == 0
    ship = tmp_path / "ship"
    assert main(["export", "--src", str(teacher), "--vae-from", str(dec), "--out", str(ship), "--dtype", "fp32"]) == 0
    got, want = load_file(str(ship / "vae.safetensors")), load_file(str(dec / "vae.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((ship / "config.json").read_text())["vae_from"] == str(dec)
    other = tmp_path / "other"                          # a VAE trained from scratch: another encoder
    assert main(["base", "--preset", "tiny", "--steps", "0", "--vae-steps", "1", "--seed", "5",
                 "--out", str(other)] + COMMON) == 0
    with pytest.raises(SystemExit):
        main(["export", "--src", str(teacher), "--vae-from", str(other), "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "config.json").exists()


def test_distill_temporal_term_reaches_the_student(teacher, tmp_path):
    """--temporal: the DMD and long stages log the term and the rollout's still-pixel change next to
    the data's, and the student's weights move differently than without it."""
    args = ["distill", "--teacher", str(teacher), "--init-steps", "0", "--dmd-steps", "1", "--refiner-steps", "0",
            "--long-steps", "1"] + DISTILL + COMMON
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    assert main(args + ["--out", str(tmp_path / "still"), "--temporal", "5", "--still-threshold", "10"]) == 0
    recs = [r for r in _metrics(tmp_path / "still") if r["stage"] in ("dmd", "long")]
    assert [r["stage"] for r in recs] == ["dmd", "long"]
    for r in recs:
        assert r["temporal"] > 0 and r["still_change"] > 0 and r["still_change_data"] >= 0
        assert r["loss"] >= r["temporal"] * 5
    assert all("temporal" not in r for r in _metrics(tmp_path / "plain"))
    wa, wb = (load_file(str(tmp_path / d / "backbone.safetensors")) for d in ("plain", "still"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    # --dmd-weight 0: the temporal term alone (no fake-score updates, no DMD figures); both 0 refused
    assert main(args + ["--out", str(tmp_path / "alone"), "--temporal", "5", "--still-threshold", "10",
                        "--dmd-weight", "0"]) == 0
    alone = [r for r in _metrics(tmp_path / "alone") if r["stage"] in ("dmd", "long")]
    assert len(alone) == 2 and all("fake_loss" not in r and "dmd_grad" not in r for r in alone)
    assert all(r["loss"] == pytest.approx(5 * r["temporal"], rel=1e-5) for r in alone)
    wc = load_file(str(tmp_path / "alone" / "backbone.safetensors"))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    # --anchor: where the data moves, the outputs are held to the starting student's (0 at the first step)
    # (threshold 0: every pixel moves; the DMD step moves the student away from its start)
    assert main(args + ["--out", str(tmp_path / "anchored"), "--still-threshold", "0", "--anchor", "1"]) == 0
    held = [r for r in _metrics(tmp_path / "anchored") if r["stage"] in ("dmd", "long")]
    assert held[0]["anchor"] == 0.0 and held[1]["anchor"] > 0 and "temporal" not in held[0]
    for bad in (["--dmd-weight", "0"], ["--anchor", "-1"]):
        with pytest.raises(SystemExit):
            main(args + ["--out", str(tmp_path / "none")] + bad)


def test_distill_refiner_sigma_overrides_the_stream_setting(teacher, tmp_path):
    """--refiner-sigma trains the refiner at another noise level and ships it in the stream config
    the runtime reads; out-of-range values are refused."""
    args = ["distill", "--teacher", str(teacher), "--init-steps", "0", "--dmd-steps", "0", "--long-steps", "0",
            "--refiner-steps", "1"] + DISTILL + COMMON
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--refiner-sigma", "0.05"]) == 0
    sig = lambda d: json.loads((tmp_path / d / "config.json").read_text())["config"]["stream"]["refiner_sigma"]  # noqa: E731
    assert sig("a") == json.loads((teacher / "config.json").read_text())["config"]["stream"]["refiner_sigma"] != 0.05
    assert sig("b") == 0.05 and lpm_rt.load(str(tmp_path / "b")).model.cfg.stream.refiner_sigma == 0.05
    wa, wb = (load_file(str(tmp_path / d / "refiner.safetensors")) for d in ("a", "b"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)          # the loss saw the other noise level
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "c"), "--refiner-sigma", "1.5"])


def test_distill_init_guidance_and_sync_data_reach_stage_one(teacher, tmp_path, monkeypatch):
    """--init-guidance sets the CFG of the teacher trajectories stage 1 regresses onto (the other
    stages keep --guidance); --sync-data adds the lip-sync loss against the data clip's latents (in units of the data's variance),
    where --sync asks for the teacher sample's mouth; --nod adds the head probe's loss against the teacher sample. On world
    clips (they know the mouth)."""
    import lpm_rt.train.distill as D
    seen = {"scale": [], "x0_t": [], "target": [], "norm": [], "kind": []}
    ode, sl = D.teacher_ode, D.sync_loss

    def spy_ode(net, noise, cond, grid, scale, rti):
        seen["scale"].append(scale)
        out = ode(net, noise, cond, grid, scale, rti)
        seen["x0_t"].append(out[1])
        return out

    def spy_sync(probe, pred, want, mouth, norm=None):
        seen["kind"].append(type(probe))
        seen["target"].append(want)
        seen["norm"].append((norm, probe.var))
        return sl(probe, pred, want, mouth, norm=norm)

    monkeypatch.setattr(D, "teacher_ode", spy_ode)
    monkeypatch.setattr(D, "sync_loss", spy_sync)
    args = ["distill", "--teacher", str(teacher), "--init-steps", "1", "--dmd-steps", "0", "--refiner-steps", "0",
            "--long-steps", "0", "--guidance", "2.5", "--pool", "2"] + DISTILL + \
        ["--batch", "1", "--frames", "4", "--warmup", "1"]

    def run(name, *extra):
        for v in seen.values():
            v.clear()
        assert main(args + ["--out", str(tmp_path / name), *extra]) == 0
        return [r for r in _metrics(tmp_path / name) if r["stage"] == "ode_init"]

    rec = run("teacher", "--sync", "1")
    assert seen["scale"] == [2.5] and len(seen["target"]) == 1 and seen["target"][0] is seen["x0_t"][0]
    assert seen["norm"][0][0] is None                       # --sync: the batch's variance, as in `train base`
    assert rec[0]["sync"] > 0 and rec[0]["loss"] == pytest.approx(rec[0]["mse"] + rec[0]["sync"], rel=1e-5)
    rec = run("data", "--sync-data", "2", "--init-guidance", "4")
    assert seen["scale"] == [4.0] and len(seen["target"]) == 1
    assert seen["norm"][0][0] == seen["norm"][0][1] > 0     # --sync-data: the data's variance
    assert seen["target"][0].shape == seen["x0_t"][0].shape and not torch.equal(seen["target"][0], seen["x0_t"][0])
    assert rec[0]["sync"] > 0 and rec[0]["loss"] == pytest.approx(rec[0]["mse"] + rec[0]["sync"], rel=1e-5)
    assert json.loads((tmp_path / "data" / "config.json").read_text())["args"]["init_guidance"] == 4.0
    assert run("plain")[0]["sync"] == 0.0
    rec = run("nod", "--nod", "2")                          # the head probe, in units of the data's variance
    from lpm_rt.train.mouth import HeadProbe
    assert seen["kind"] == [HeadProbe] and len(seen["target"]) == 1 and seen["target"][0] is seen["x0_t"][0]
    assert seen["norm"][0][0] == seen["norm"][0][1] > 0
    assert rec[0]["sync"] > 0 and rec[0]["loss"] == pytest.approx(rec[0]["mse"] + rec[0]["sync"], rel=1e-5)
    for bad in (["--sync-data", "-1"], ["--init-guidance", "0.5"], ["--nod", "-1"]):
        with pytest.raises(SystemExit):
            main(args + bad + ["--out", str(tmp_path / "x")])


def test_distill_rollout_sync_holds_the_rollout_to_the_data_mouth(teacher, tmp_path, monkeypatch):
    """--rollout-sync: in stage 2 the rollout's gradient-carrying outputs get the lip-sync loss
    against the data clip's latents (the clip whose audio conditioned the rollout), in units of the
    data's variance; stage 4 does not; negative weights are refused. On world clips."""
    import lpm_rt.train.distill as D
    seen = []
    sl = D.sync_loss

    def spy_sync(probe, pred, want, mouth, norm=None):
        seen.append((pred, want, norm, probe.var))
        return sl(probe, pred, want, mouth, norm=norm)

    monkeypatch.setattr(D, "sync_loss", spy_sync)
    args = ["distill", "--teacher", str(teacher), "--init-steps", "0", "--dmd-steps", "1", "--refiner-steps", "0",
            "--long-steps", "1", "--pool", "2"] + DISTILL + ["--batch", "1", "--frames", "4", "--warmup", "1"]
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    assert seen == [] and all("rollout_sync" not in r for r in _metrics(tmp_path / "plain"))
    assert main(args + ["--out", str(tmp_path / "sync"), "--rollout-sync", "2"]) == 0
    assert len(seen) == 1                                   # the dmd step only, not the long one
    pred, want, norm, var = seen[0]
    assert pred.requires_grad and not want.requires_grad and pred.shape == want.shape
    assert norm == var > 0
    recs = {r["stage"]: r for r in _metrics(tmp_path / "sync") if r["stage"] in ("dmd", "long")}
    assert recs["dmd"]["rollout_sync"] > 0 and "rollout_sync" not in recs["long"]
    assert recs["dmd"]["loss"] >= 2 * recs["dmd"]["rollout_sync"]
    wa, wb = (load_file(str(tmp_path / d / "backbone.safetensors")) for d in ("plain", "sync"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "bad"), "--rollout-sync", "-1"])


def test_distill_anchor_mouth_holds_only_the_mouth(teacher, tmp_path, monkeypatch):
    """--anchor-mouth: the anchor term is weighted by a Gaussian around the data clip's mouth, on
    the frames the gradient-carrying outputs cover (stage 4: the last window of the long clip), not
    by where the data moves; it needs --anchor. On world clips."""
    import lpm_rt.train.distill as D
    calls = []
    lmw = D.latent_mouth_weight

    def spy(m, mouth, weight, size):
        out = lmw(m, mouth, weight, size)
        calls.append((mouth.shape[1], out.shape[2], weight))
        return out

    monkeypatch.setattr(D, "latent_mouth_weight", spy)
    plain = ["distill", "--teacher", str(teacher), "--init-steps", "0", "--dmd-steps", "1", "--refiner-steps", "0",
             "--long-steps", "1", "--pool", "2", "--still-threshold", "0"] + DISTILL + \
        ["--batch", "1", "--frames", "4", "--warmup", "1"]
    args = plain + ["--anchor", "1"]
    assert main(args + ["--out", str(tmp_path / "moving")]) == 0
    assert calls == []
    assert main(args + ["--out", str(tmp_path / "mouth"), "--anchor-mouth"]) == 0
    temporal = lpm_rt.load(str(teacher)).model.cfg.model.vae_temporal
    assert [c[2] for c in calls] == [1.0, 1.0]              # the dmd step and the long step
    assert all(n == f * temporal for n, f, _ in calls) and calls[1][1] == calls[0][1] == 4
    moving, mouth = ([r for r in _metrics(tmp_path / d) if r["stage"] in ("dmd", "long")] for d in ("moving", "mouth"))
    assert moving[0]["anchor"] == mouth[0]["anchor"] == 0.0
    assert mouth[1]["anchor"] > 0 and mouth[1]["anchor"] != pytest.approx(moving[1]["anchor"])
    with pytest.raises(SystemExit):
        main(plain + ["--out", str(tmp_path / "bad"), "--anchor-mouth"])
    assert not (tmp_path / "bad").exists()


def test_export_ships_stream_guidance(teacher, tmp_path):
    """export --speaker-guidance/--listener-guidance write the stream settings the runtime reads;
    the weights are the plain export's, byte for byte; bad values are refused."""
    plain, guided = tmp_path / "plain", tmp_path / "guided"
    assert main(["export", "--src", str(teacher), "--out", str(plain)]) == 0
    assert main(["export", "--src", str(teacher), "--out", str(guided), "--speaker-guidance", "2",
                 "--listener-guidance", "1.5"]) == 0
    s = lpm_rt.load(str(guided)).cfg.stream
    assert (s.speaker_guidance, s.listener_guidance) == (2.0, 1.5)
    assert lpm_rt.load(str(plain)).cfg.stream.speaker_guidance == 1.0
    assert all((plain / f).read_bytes() == (guided / f).read_bytes() for f in ("backbone.safetensors", "refiner.safetensors"))
    with pytest.raises(SystemExit):
        main(["export", "--src", str(teacher), "--out", str(tmp_path / "bad"), "--speaker-guidance", "-1"])


def test_distill_adds_audio_window_slots_to_a_run_without_them(teacher, tmp_path):
    """--audio-window-pos on a run --from one without the slot embeddings: every other weight
    comes over as it was, the slots start at zero, optimizers start afresh, the trained slots are
    saved and the model loads and streams; --audio-lr-mult speeds up the audio path."""
    base = ["distill", "--teacher", str(teacher), "--long-steps", "0", "--dmd-steps", "0"] + DISTILL + COMMON
    first = tmp_path / "first"
    assert main(base + ["--init-steps", "1", "--refiner-steps", "0", "--out", str(first)]) == 0
    again = tmp_path / "again"
    assert main(base + ["--init-steps", "1", "--refiner-steps", "0", "--from", str(first), "--restart-at", "dmd",
                        "--audio-window-pos", "--out", str(again)]) == 0
    cfg = json.loads((again / "config.json").read_text())["config"]["model"]
    assert cfg["audio_window_pos"] is True
    for part in ("backbone", "refiner"):
        a, f = load_file(str(again / f"{part}.safetensors")), load_file(str(first / f"{part}.safetensors"))
        assert set(a) - set(f) == {"audio_encoder.window"} and not a["audio_encoder.window"].any()
        assert all(torch.equal(a[k], f[k]) for k in f), part          # nothing trained: dmd and refiner 0 steps
    trained = tmp_path / "trained"                       # stage 1 redone: the slots learn
    assert main(base + ["--init-steps", "2", "--refiner-steps", "0", "--from", str(first), "--restart-at", "ode_init",
                        "--audio-window-pos", "--audio-lr-mult", "10", "--out", str(trained)]) == 0
    slow = tmp_path / "slow"
    assert main(base + ["--init-steps", "2", "--refiner-steps", "0", "--from", str(first), "--restart-at", "ode_init",
                        "--audio-window-pos", "--out", str(slow)]) == 0
    w, w1 = (load_file(str(d / "backbone.safetensors"))["audio_encoder.window"] for d in (trained, slow))
    assert w1.abs().max() > 0 and w.abs().max() > 5 * w1.abs().max()    # Adam: steps ~ the learning rate
    assert lpm_rt.load(str(trained)).model.cfg.model.audio_window_pos
    assert len(_stream(trained)) > 0
    fresh = tmp_path / "fresh"                           # and straight from the teacher
    assert main(base + ["--init-steps", "1", "--refiner-steps", "0", "--audio-window-pos", "--out", str(fresh)]) == 0
    assert "audio_encoder.window" in load_file(str(fresh / "backbone.safetensors"))
    slotted = tmp_path / "slotted"                       # a teacher with trained slots, a --from run without
    assert main(["base", "--preset", "tiny", "--init", str(teacher), "--audio-window-pos", "--vae-steps", "0",
                 "--steps", "2", "--out", str(slotted)] + COMMON) == 0
    tw = load_file(str(slotted / "backbone.safetensors"))["audio_encoder.window"]
    follow = tmp_path / "follow"
    redo = ["distill", "--teacher", str(slotted)] + base[3:]
    assert main(redo + ["--init-steps", "1", "--refiner-steps", "0", "--from", str(first), "--restart-at", "dmd",
                        "--out", str(follow)]) == 0
    b = load_file(str(follow / "backbone.safetensors"))
    assert tw.abs().max() > 0 and torch.equal(b["audio_encoder.window"], tw)      # the teacher's slots
    f = load_file(str(first / "backbone.safetensors"))
    assert all(torch.equal(b[k], f[k]) for k in f)                                  # the rest: --from's


def test_base_init_adds_audio_window_slots(teacher, tmp_path):
    """train base --init DIR --audio-window-pos: DIR's weights load, the slots start at zero and
    train; a later --init from that model keeps them without the flag."""
    slots = tmp_path / "slots"
    assert main(["base", "--preset", "tiny", "--init", str(teacher), "--audio-window-pos", "--vae-steps", "0",
                 "--steps", "0", "--out", str(slots)] + COMMON) == 0
    a, t = load_file(str(slots / "backbone.safetensors")), load_file(str(teacher / "backbone.safetensors"))
    assert set(a) - set(t) == {"audio_encoder.window"} and not a["audio_encoder.window"].any()
    assert all(torch.equal(a[k], t[k]) for k in t)
    more = tmp_path / "more"
    assert main(["base", "--preset", "tiny", "--init", str(slots), "--vae-steps", "0", "--steps", "2",
                 "--out", str(more)] + COMMON) == 0
    assert json.loads((more / "config.json").read_text())["config"]["model"]["audio_window_pos"] is True
    assert load_file(str(more / "backbone.safetensors"))["audio_encoder.window"].abs().max() > 0


def test_distill_student_starts_from_an_online_model(teacher, tmp_path):
    """--student DIR: the backbone and refiner start as DIR's (here an fp16 export of a distilled
    run), the fake score as the teacher; slots a slotless DIR lacks come from the slotted teacher;
    a DIR on another latent space, or with --from, is refused."""
    base = ["distill", "--long-steps", "0", "--dmd-steps", "0"] + DISTILL + COMMON
    first = tmp_path / "first"
    assert main(base + ["--teacher", str(teacher), "--init-steps", "2", "--refiner-steps", "2",
                        "--out", str(first)]) == 0
    ship = tmp_path / "ship"
    assert main(["export", "--src", str(first), "--out", str(ship), "--dtype", "fp16"]) == 0
    slotted = tmp_path / "slotted"
    assert main(["base", "--preset", "tiny", "--init", str(teacher), "--audio-window-pos", "--vae-steps", "0",
                 "--steps", "2", "--out", str(slotted)] + COMMON) == 0
    again = tmp_path / "again"                           # nothing trained: the published model is the start
    assert main(base + ["--teacher", str(slotted), "--init-steps", "0", "--refiner-steps", "0", "--student", str(ship),
                        "--out", str(again)]) == 0
    tw = load_file(str(slotted / "backbone.safetensors"))
    for part in ("backbone", "refiner"):
        got, want = load_file(str(again / f"{part}.safetensors")), load_file(str(ship / f"{part}.safetensors"))
        assert set(got) - set(want) == {"audio_encoder.window"}
        assert all(torch.equal(got[k], want[k].float()) for k in want), part
        t = load_file(str(teacher / "backbone.safetensors"))
        assert any(not torch.equal(got[k], t[k]) for k in want if k in t), part    # not the teacher's
    assert torch.equal(load_file(str(again / "backbone.safetensors"))["audio_encoder.window"],
                       tw["audio_encoder.window"])
    fake = load_file(str(again / "ckpt" / (again / "ckpt" / "LATEST").read_text() / "aux_fake.safetensors"))
    assert all(torch.equal(fake[k], tw[k]) for k in tw)
    trained = tmp_path / "trained"                       # and it trains from there
    assert main(base + ["--teacher", str(slotted), "--init-steps", "1", "--refiner-steps", "0", "--student", str(ship),
                        "--out", str(trained)]) == 0
    assert len(_stream(trained)) > 0
    other = tmp_path / "other"                           # a VAE from scratch: another latent space
    assert main(["base", "--preset", "tiny", "--steps", "1", "--vae-steps", "1", "--seed", "5",
                 "--out", str(other)] + COMMON) == 0
    with pytest.raises(SystemExit):
        main(base + ["--teacher", str(other), "--init-steps", "1", "--student", str(ship), "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "config.json").exists()
    with pytest.raises(SystemExit):
        main(base + ["--teacher", str(teacher), "--student", str(ship), "--from", str(first), "--restart-at", "dmd",
                     "--out", str(tmp_path / "bad2")])


def test_audio_context_widens_the_window_of_a_narrower_model(teacher, tmp_path):
    """train base --init DIR --audio-context N: DIR's slot embeddings are kept as the newest slots
    and its oldest repeated for the added frames; the wider model trains, streams, and is the
    teacher of a student started from the narrower one (distill --student widens it the same
    way). A window cannot shrink."""
    from lpm_rt.train.base import widen_audio_window
    w = torch.arange(6.0).view(2, 3)
    got = widen_audio_window({"audio_encoder.window": w, "x": w}, 3)
    assert torch.equal(got["audio_encoder.window"], torch.stack([w[0], w[0], w[0], w[1]])) and got["x"] is w
    with pytest.raises(ValueError, match="slots"):
        widen_audio_window({"audio_encoder.window": w}, 0)
    slots = tmp_path / "slots"
    assert main(["base", "--preset", "tiny", "--init", str(teacher), "--audio-window-pos", "--vae-steps", "0",
                 "--steps", "2", "--out", str(slots)] + COMMON) == 0
    ctx = json.loads((slots / "config.json").read_text())["config"]["model"]["audio_context"]
    narrow = load_file(str(slots / "backbone.safetensors"))
    assert narrow["audio_encoder.window"].shape[0] == ctx + 1 and narrow["audio_encoder.window"].abs().max() > 0
    wide = tmp_path / "wide"
    assert main(["base", "--preset", "tiny", "--init", str(slots), "--audio-context", str(ctx + 2), "--vae-steps", "0",
                 "--speaker-audio-context", str(ctx), "--steps", "0", "--out", str(wide)] + COMMON) == 0
    model_cfg = json.loads((wide / "config.json").read_text())["config"]["model"]
    assert model_cfg["audio_context"] == ctx + 2 and model_cfg["speaker_audio_context"] == ctx   # the speaker's stays
    b = load_file(str(wide / "backbone.safetensors"))
    assert torch.equal(b["audio_encoder.window"], widen_audio_window(narrow, ctx + 2)["audio_encoder.window"])
    assert all(torch.equal(b[k], narrow[k]) for k in narrow if k != "audio_encoder.window")
    trained = tmp_path / "trained"
    assert main(["base", "--preset", "tiny", "--init", str(wide), "--vae-steps", "0", "--steps", "2",
                 "--out", str(trained)] + COMMON) == 0
    assert lpm_rt.load(str(trained)).model.cfg.model.audio_context == ctx + 2
    assert lpm_rt.load(str(trained)).model.cfg.model.speaker_audio_context == ctx         # kept from --init
    with pytest.raises(ValueError, match="speaker_audio_context"):
        main(["base", "--preset", "tiny", "--init", str(wide), "--speaker-audio-context", str(ctx + 3),
              "--vae-steps", "0", "--steps", "0", "--out", str(tmp_path / "bad_spk")] + COMMON)
    assert len(_stream(trained)) > 0
    with pytest.raises(ValueError, match="widen, not shrink"):
        main(["base", "--preset", "tiny", "--init", str(wide), "--audio-context", str(ctx), "--vae-steps", "0",
              "--steps", "0", "--out", str(tmp_path / "bad")] + COMMON)
    base = ["distill", "--long-steps", "0", "--dmd-steps", "0"] + DISTILL + COMMON
    student = tmp_path / "student"                       # an online model with the narrow window
    assert main(base + ["--teacher", str(slots), "--init-steps", "1", "--refiner-steps", "1", "--out", str(student)]) == 0
    again = tmp_path / "again"
    assert main(base + ["--teacher", str(trained), "--init-steps", "0", "--refiner-steps", "0",
                        "--student", str(student), "--out", str(again)]) == 0
    for part in ("backbone", "refiner"):
        got, was = load_file(str(again / f"{part}.safetensors")), load_file(str(student / f"{part}.safetensors"))
        assert torch.equal(got["audio_encoder.window"], widen_audio_window(was, ctx + 2)["audio_encoder.window"]), part
    assert len(_stream(again)) > 0 and lpm_rt.load(str(again)).model.cfg.model.speaker_audio_context == ctx
    with pytest.raises(SystemExit):                      # the wide model as the student of the narrow teacher
        main(base + ["--teacher", str(slots), "--init-steps", "0", "--refiner-steps", "0",
                     "--student", str(again), "--out", str(tmp_path / "bad2")])


def test_export_blends_two_fine_tunes_of_one_model(teacher, tmp_path):
    """export --blend DIR --blend-weight W: backbone and refiner are the lerp of SRC's and DIR's
    tensors (W = 0: SRC's bytes), the VAE stays SRC's, the metadata says so; a DIR with another
    config or latent space and a W outside [0, 1] are refused before anything is written."""
    tuned = tmp_path / "tuned"                           # the same model, its DiT trained on: same VAE
    assert main(["base", "--preset", "tiny", "--init", str(teacher), "--vae-freeze-encoder", "--vae-steps", "0",
                 "--steps", "2", "--out", str(tuned)] + COMMON) == 0
    ship, zero, plain = tmp_path / "ship", tmp_path / "zero", tmp_path / "plain"
    assert main(["export", "--src", str(teacher), "--blend", str(tuned), "--blend-weight", "0.25",
                 "--out", str(ship), "--dtype", "fp32"]) == 0
    a, b = (load_file(str(d / "backbone.safetensors")) for d in (teacher, tuned))
    assert any(not torch.equal(a[k], b[k]) for k in a)                 # the run moved the backbone
    for part in ("backbone", "refiner"):
        a, b = load_file(str(teacher / f"{part}.safetensors")), load_file(str(tuned / f"{part}.safetensors"))
        got = load_file(str(ship / f"{part}.safetensors"))
        assert all(torch.equal(got[k], torch.lerp(a[k], b[k], 0.25)) for k in a), part
    assert load_file(str(ship / "vae.safetensors")).keys() == load_file(str(teacher / "vae.safetensors")).keys()
    assert all(torch.equal(v, load_file(str(teacher / "vae.safetensors"))[k])
               for k, v in load_file(str(ship / "vae.safetensors")).items())
    assert json.loads((ship / "config.json").read_text())["blend"] == {"from": str(tuned), "weight": 0.25}
    assert main(["export", "--src", str(teacher), "--blend", str(tuned), "--blend-weight", "0",
                 "--out", str(zero)]) == 0
    assert main(["export", "--src", str(teacher), "--out", str(plain)]) == 0
    assert all((zero / f).read_bytes() == (plain / f).read_bytes() for f in ("backbone.safetensors", "refiner.safetensors"))
    assert lpm_rt.load(str(ship)).trained
    other = tmp_path / "other"                           # a VAE from scratch: another latent space
    assert main(["base", "--preset", "tiny", "--steps", "1", "--vae-steps", "1", "--seed", "5",
                 "--out", str(other)] + COMMON) == 0
    slotted = tmp_path / "slotted"                       # another config (audio-window slots)
    assert main(["base", "--preset", "tiny", "--init", str(teacher), "--audio-window-pos", "--vae-freeze-encoder",
                 "--vae-steps", "0", "--steps", "1", "--out", str(slotted)] + COMMON) == 0
    for bad in (["--blend", str(other)], ["--blend", str(slotted)], ["--blend", str(tuned), "--blend-weight", "1.5"]):
        with pytest.raises(SystemExit):
            main(["export", "--src", str(teacher), "--out", str(tmp_path / "bad")] + bad)
        assert not (tmp_path / "bad" / "config.json").exists()
