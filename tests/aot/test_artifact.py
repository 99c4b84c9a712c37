"""Artifacts: cpu round trip through lpm_rt.load, verification refusals, describe()."""

import json
import shutil

import numpy as np
import pytest
import torch

import lpm_rt
from lpm_rt.artifact import QUANTIZED_RE, describe, verify

from lpm_compile import build


def _frames(avatar, seconds=0.5, seed=0):
    g = np.random.default_rng(seed)
    img = g.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pcm = (0.1 * g.standard_normal(int(24000 * seconds))).astype(np.float32)
    with avatar.open_session(references=[img], prompt="talk", seed=seed) as s:
        s.push_audio(pcm, 24000, track="speaker")
        s.flush()
        return np.stack([f.image for f in s.frames()]).astype(np.float64)


def _err(a, b):
    return float(np.abs(a - b).mean())


def test_cpu_fp32_round_trip_is_exact(artifact):
    path = artifact("cpu")
    meta = json.loads((path / "manifest.json").read_text())
    assert meta["target"]["name"] == "cpu" and meta["kernels"] == []
    assert set(meta["files"]) == {f"weights/{p}.safetensors" for p in ("backbone", "refiner", "vae")}
    got = _frames(lpm_rt.load(str(path)))
    want = _frames(lpm_rt.load("tiny"))                  # the reference path, same initial weights
    assert got.shape == want.shape == (12, 64, 64, 3)
    assert np.isfinite(got).all()
    assert _err(got, want) == 0.0, f"max {np.abs(got - want).max()}"


def test_cpu_bf16_weights_within_calibrated_bound(tmp_path):
    build("tiny", "cpu", tmp_path / "a", weights="bf16", step_check=False, log=lambda m: None)
    got = _frames(lpm_rt.load(str(tmp_path / "a")))
    ref_av = lpm_rt.load("tiny")
    want = _frames(ref_av)
    # the same math in low precision: the reference model with its block linears rounded to bf16
    low = lpm_rt.load("tiny")
    with torch.no_grad():
        for net in (low.model.backbone, low.model.refiner):
            for k, p in net.named_parameters():
                if QUANTIZED_RE.match(k):
                    p.copy_(p.bfloat16().float())
    expect = _frames(low)
    e_art, e_low = _err(got, want), _err(expect, want)
    assert e_art > 0, "bf16 weights were not applied"
    assert e_art <= 2 * e_low + 1e-3, f"artifact err {e_art:.4f} vs bf16 reference err {e_low:.4f}"


def test_quantized_step_sqnr_recorded(artifact):
    meta = json.loads((artifact("h100") / "manifest.json").read_text())
    q = meta["quantization"]
    assert q["format"] == "fp8_e4m3_channel"
    assert q["summary"]["min_db"] > 25                   # e4m3 per channel: ~31 dB on Gaussian weights
    assert q["step_check"]["velocity_db"] > 25 and q["step_check"]["video_db"] > 25
    assert len(q["layers"]) == q["summary"]["layers"] > 0
    tuning = meta["kernel_tuning"]                      # where the h100 tables come from
    assert tuning["kind"] == "device" and "H200" in tuning["device"] and tuning["date"]
    assert {"paged_attention", "fp8_linear"} <= set(tuning["tuned"])


def _copy(src, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(src, dst)
    return dst


def test_tampered_weight_names_the_file(artifact, tmp_path):
    d = _copy(artifact("cpu"), tmp_path)
    f = d / "weights" / "refiner.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(lpm_rt.ArtifactError, match=r"refiner\.safetensors: sha256 mismatch"):
        lpm_rt.load(str(d))


def test_tampered_cubin_and_extra_file(artifact, tmp_path):
    d = _copy(artifact("h100"), tmp_path)
    cubin = sorted((d / "kernels").glob("*.cubin"))[0]
    data = bytearray(cubin.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cubin.write_bytes(bytes(data))
    with pytest.raises(lpm_rt.ArtifactError, match=cubin.name):
        verify(d)
    d2 = _copy(artifact("cpu"), tmp_path / "x")
    (d2 / "weights" / "extra.safetensors").write_bytes(b"")
    with pytest.raises(lpm_rt.ArtifactError, match="extra.safetensors: not listed"):
        lpm_rt.load(str(d2))


def test_manifest_edits_are_refused(artifact, tmp_path):
    d = _copy(artifact("cpu"), tmp_path)
    mf = d / "manifest.json"
    meta = json.loads(mf.read_text())
    mf.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(lpm_rt.ArtifactError, match="format_version 99"):
        lpm_rt.load(str(d))
    meta["config"]["model"]["num_layers"] = 3
    mf.write_text(json.dumps(meta))
    with pytest.raises(lpm_rt.ArtifactError, match="config_hash"):
        lpm_rt.load(str(d))
    mf.write_text("{not json")
    with pytest.raises(lpm_rt.ArtifactError, match="manifest.json: not valid JSON"):
        lpm_rt.load(str(d))


def test_toolchain_mismatch_is_refused(artifact, tmp_path):
    d = _copy(artifact("cpu"), tmp_path)
    mf = d / "manifest.json"
    meta = json.loads(mf.read_text())
    meta["toolchain"]["lpm_rt"] = "7.3.0"
    mf.write_text(json.dumps(meta))
    with pytest.raises(lpm_rt.ArtifactError, match="compiled by lpm_rt 7.3.0"):
        lpm_rt.load(str(d))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without an sm_90 GPU")
@pytest.mark.parametrize("target,arch", [("h100", "sm_90a"), ("orin", "sm_87")])
def test_gpu_artifact_refused_without_matching_gpu(artifact, target, arch):
    with pytest.raises(lpm_rt.ArtifactError, match=f"{target} artifact needs an {arch} GPU.*no CUDA GPU"):
        lpm_rt.load(str(artifact(target)))
    info = describe(artifact(target))
    assert info["integrity"] == "ok" and info["runnable_here"] is False
    assert info["target"]["arch"] == arch and info["kernels"]
    assert info["kernel_tuning"]["kind"] == ("device" if target == "h100" else "heuristic")   # where tiles come from
    assert describe(artifact("cpu"))["runnable_here"] is True


def test_compile_from_a_model_directory(tmp_path):
    from lpm_rt.checkpoint import save
    from lpm_rt.model.online import OnlineLPM
    from lpm_rt.config import preset

    save(OnlineLPM(preset("tiny")).init_weights(3), tmp_path / "ckpt")
    meta = build(str(tmp_path / "ckpt"), "cpu", tmp_path / "a", step_check=False, log=lambda m: None)
    assert meta["model"]["source"] == str((tmp_path / "ckpt").resolve())
    assert verify(tmp_path / "a")["config_hash"] == meta["config_hash"]


def test_h100_fp8_weights_load_as_fp8_gemms(artifact):
    """With the triton backend an h100 artifact's e4m3 block linears run as FP8 GEMMs from their
    stored codes: the loaded codes are exactly the stored ones, every block switches to the
    fused form, and the step matches the same model quantized in memory (both through the
    fp32 emulation of the GEMMs here: no GPU)."""
    from safetensors.torch import load_file

    from lpm_rt.artifact import QSCALE_SUFFIX, _load_weights, read_manifest, verify_files
    from lpm_rt.config import LPMConfig
    from lpm_rt.model.fp8 import FP8Linear
    from lpm_rt.model.online import OnlineLPM

    d = artifact("h100")
    meta = read_manifest(d)                 # integrity only: the machine check refuses a GPU target here
    verify_files(d, meta)
    cfg = LPMConfig.from_dict(meta["config"])
    model = OnlineLPM(cfg)
    switched = _load_weights(d, meta, model, torch.float32, fp8_gemms=True)
    assert switched == cfg.model.num_layers + cfg.model.refiner_layers
    stored = load_file(str(d / "weights/backbone.safetensors"))
    assert model.backbone.blocks[1].self_attn.q is None and model.backbone.blocks[1].self_attn.qkv_fp8 is not None
    q = model.backbone.blocks[1].ffn[2]
    assert isinstance(q, FP8Linear) and model.backbone.blocks[1].fp8
    assert torch.equal(q.w8.view(torch.uint8), stored["blocks.1.ffn.2.weight"].view(torch.uint8))
    assert torch.equal(q.w_scale, stored[f"blocks.1.ffn.2.weight{QSCALE_SUFFIX}"].float())
    # the dense model loaded from the same artifact, quantized in memory, streams the same
    dense = OnlineLPM(cfg)
    _load_weights(d, meta, dense, torch.float32)
    g = torch.Generator().manual_seed(0)
    m, s = cfg.model, cfg.stream
    ref = torch.randn(1, m.vae_z_dim, 1, s.latent_h, s.latent_w, generator=g)
    n = 250 + (m.audio_context + s.chunk_frames) * m.vae_temporal * 1000
    a = torch.randn(1, n, generator=g) * 0.1
    outs = []
    for net in (model.eval(), dense.quantize_fp8_().eval()):
        st = net.open_stream(ref, torch.tensor([0]), "talk", seed=3)
        outs.append(net.step(st, a, a))
        st.close()
    assert torch.allclose(outs[0], outs[1], atol=1e-5), float((outs[0] - outs[1]).abs().max())


def test_compile_at_another_resolution(tmp_path, capsys):
    """--resolution streams the artifact at that size: frames come out WxH, the page size is kept
    where it divides a latent frame's tokens (tiny's 8 at 96x64: 24 tokens) and otherwise is the
    largest divisor in 16..128 (edge-1.3b at 256x256: 256 tokens, 120 -> 128); sizes the VAE and
    patches cannot tile, or whose frames no page size divides, are refused before any work."""
    from lpm_compile import main as compile_main
    from lpm_compile.pipeline import with_resolution
    from lpm_rt.config import preset

    assert compile_main(["--model", "tiny", "--target", "cpu", "--resolution", "96x64",
                         "--out", str(tmp_path / "a")]) == 0
    av = lpm_rt.load(tmp_path / "a")
    assert (av.spec.width, av.spec.height) == (96, 64) and av.cfg.stream.page_size == 8
    assert describe(tmp_path / "a")["resolution"] == "96x64"
    assert _frames(av, seconds=0.25).shape[1:] == (64, 96, 3)
    edge = with_resolution(preset("edge-1.3b"), 256, 256).stream
    assert (edge.tokens_per_frame, edge.page_size) == (256, 128)
    assert with_resolution(preset("edge-1.3b"), 832, 480).stream.page_size == 120
    with pytest.raises(ValueError, match="multiples of 16"):
        with_resolution(preset("edge-1.3b"), 250, 256)
    with pytest.raises(ValueError, match="no page size"):
        with_resolution(preset("edge-1.3b"), 16 * 131, 16)       # 131 tokens a frame, a prime
    assert compile_main(["--model", "tiny", "--target", "cpu", "--resolution", "96", "--out", str(tmp_path / "b")]) == 2
    assert "not WxH" in capsys.readouterr().err
    assert compile_main(["--model", "tiny", "--target", "cpu", "--resolution", "90x64", "--out", str(tmp_path / "b")]) == 1
    assert "multiples of 16" in capsys.readouterr().err and not (tmp_path / "b").exists()
