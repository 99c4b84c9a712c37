"""Audio pre-training (`train base --audio-pretrain`): windows laid out as the model reads them,
targets from the world's labels, a loss that learns, and a stage that touches the encoder alone."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lpm_rt.config import preset
from lpm_rt.model.dit import LPMDiT
from lpm_rt.train.audio import AudioLabelPool, audio_pretrain_loss, audio_readers
from lpm_rt.train.cli import main
from _util import script


def _cfg(ctx=2):
    cfg = preset("tiny")
    return cfg.replace(model=cfg.model.replace(audio_context=ctx))


def test_pool_windows_end_on_their_own_frame():
    cfg = _cfg()
    pool = AudioLabelPool(cfg, 2, seconds=3.0)
    c = pool.clip(1)
    assert pool.clip(3) is c                                   # index mod size: generated once
    per, ctx = 16, cfg.model.audio_context
    assert c["mels"][1].shape == ((ctx + c["frames"]) * per, cfg.model.n_mels)
    assert abs(float(c["head"].mean())) < 1e-5 and abs(float(c["head"].std(unbiased=False)) - 1) < 1e-3
    g = torch.Generator().manual_seed(0)
    (spk, lst), head, mouth = pool.batch(g, [1], 6)
    assert spk.shape == lst.shape == (6, (ctx + 1) * per, cfg.model.n_mels)
    for i in range(6):                 # find the frame each row was drawn from: its window's last 16
        f = [j for j in range(c["frames"]) if torch.equal(lst[i, -per:], c["mels"][1][(j + ctx) * per:(j + ctx + 1) * per])
             and torch.equal(spk[i], c["mels"][0][j * per:(j + ctx + 1) * per])]
        assert f and any(float(head[i]) == float(c["head"][j]) and float(mouth[i]) == float(c["mouth"][j]) for j in f)


def test_pretrain_loss_learns_a_fixed_batch():
    """The readers and the encoder fit a batch they see over and over (a detached encoder, a loss
    that does not reach it or targets that move would leave it near where it starts)."""
    torch.manual_seed(0)
    cfg = _cfg()
    net, readers = LPMDiT(cfg.model).init_weights(0), audio_readers(cfg)
    pool = AudioLabelPool(cfg, 2, seconds=8.0, modes=("listening",))    # the partner speaks
    mels, head, mouth = pool.batch(torch.Generator().manual_seed(1), [0, 1], 32)
    opt = torch.optim.Adam(list(net.audio_encoder.parameters()) + list(readers.parameters()), 3e-3)
    first = None
    for _ in range(150):
        out = audio_pretrain_loss(net, readers, mels, head, mouth)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = float(out["loss"].detach()) if first is None else first
    assert float(out["loss"].detach()) < 0.1 * first and float(out["corr_head"]) > 0.9
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.audio_encoder.parameters())


def test_base_audio_pretrain_is_a_stage_on_the_encoder_alone(tmp_path):
    out = tmp_path / "run"
    args = ["base", "--preset", "tiny", "--steps", "0", "--vae-steps", "0", "--out", str(out), "--batch", "1",
            "--audio-pretrain", "4", "--audio-clips", "2", "--audio-batch", "8", "--ckpt-every", "2"]
    assert main(args) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    audio = [r for r in rows if r.get("stage") == "audio"]
    assert [r["step"] for r in audio] == [0, 1, 2, 3] and all({"head", "mouth", "corr_head"} <= set(r) for r in audio)
    ref = tmp_path / "ref"                                     # the same run without the stage
    assert main(["base", "--preset", "tiny", "--steps", "0", "--vae-steps", "0", "--out", str(ref), "--batch", "1"]) == 0
    got, want = (load_file(str(d / "backbone.safetensors")) for d in (out, ref))
    moved = {k for k in want if not torch.equal(got[k], want[k])}
    assert moved and all(k.startswith("audio_encoder.") for k in moved)
    assert main(args) == 0                                     # done: resuming runs nothing more
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(rows)
    frozen = tmp_path / "frozen"                               # then a teacher that keeps that encoder
    assert main(["base", "--preset", "tiny", "--init", str(out), "--steps", "2", "--vae-steps", "0", "--batch", "1",
                 "--audio-freeze", "--out", str(frozen)]) == 0
    after = load_file(str(frozen / "backbone.safetensors"))
    moved = {k for k in after if not torch.equal(after[k], got[k])}
    assert moved and not any(k.startswith("audio_encoder.") for k in moved)
    assert any(".audio_attn." in k for k in moved)            # the attention that reads it still learns
    res = tmp_path / "readout.json"                            # the held-out reading of its readers
    assert script("audio_readout").main(["--run", str(out), "--clips", "2", "--seconds", "6",
                                          "--out", str(res)]) == 0
    got = json.loads(res.read_text())
    assert all(-1.0 <= got[k] <= 1.0 for k in ("head", "head_rolled", "mouth")) and got["checkpoint"].startswith(str(out))
    with pytest.raises(SystemExit, match="audio readers"):   # a run without the stage
        script("audio_readout").main(["--run", str(ref)])


@pytest.mark.parametrize("bad", [["--audio-pretrain", "-1"], ["--audio-pretrain", "2", "--audio-clips", "0"],
                                 ["--audio-pretrain", "2", "--audio-batch", "1"]])
def test_base_audio_pretrain_refuses_bad_values(tmp_path, bad):
    with pytest.raises(SystemExit):
        main(["base", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "x"), *bad])
