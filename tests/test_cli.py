"""CLI smoke tests: every command has --help; demo and run write an mp4 that decodes."""

import subprocess
import sys

import numpy as np
import pytest

import lpm_rt
from lpm_rt.cli import main
from lpm_rt.media import read_mp4, write_wav


@pytest.mark.parametrize("cmd", [[], ["demo"], ["run"], ["info"], ["bench"], ["train"], ["train", "base"],
                                 ["train", "distill"], ["compile"], ["plan"], ["bench", "kernels"],
                                 ["bench", "quality"], ["bench", "stream"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_demo_writes_decodable_mp4(tmp_path):
    out = tmp_path / "demo.mp4"
    r = subprocess.run([sys.executable, "-m", "lpm_rt.cli", "demo", "--model", "tiny", "--seconds", "1.5",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "real-time factor" in r.stdout and "time to first frame" in r.stdout
    assert "untrained" in r.stdout                      # says plainly what it runs
    frames, audio, rate, fps = read_mp4(out)
    assert frames.shape == (36, 64, 64, 3) and fps == 24
    assert rate == 24000 and abs(len(audio) - 1.5 * rate) < 2048
    assert np.abs(audio).max() > 0.05                   # the built-in speech is in the file


def test_run_with_refs_and_wavs(tmp_path):
    rng = np.random.default_rng(0)
    spk, lis = tmp_path / "s.wav", tmp_path / "l.wav"
    write_wav(spk, 0.3 * np.sin(np.arange(16000) / 5), 16000)       # 1.0 s
    write_wav(lis, 0.3 * np.sin(np.arange(44100 // 2) / 9), 44100)  # 0.5 s
    import av
    ref = tmp_path / "ref.png"
    with av.open(str(ref), "w") as c:
        st = c.add_stream("png")
        st.width, st.height, st.pix_fmt = 64, 64, "rgb24"
        for p in st.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), format="rgb24")):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    out = tmp_path / "o.mp4"
    rc = main(["run", "--model", "tiny", "--ref", str(ref), "--speaker", str(spk), "--listener", str(lis),
               "--prompt", "smile", "--noise", "fixed", "--out", str(out)])
    assert rc == 0
    frames, audio, rate, _ = read_mp4(out)
    assert len(frames) == 24


def test_run_bad_wav_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    rc = main(["run", "--model", "tiny", "--speaker", str(bad), "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "cannot read WAV" in capsys.readouterr().err


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "presets" in out


def test_bench_stream_fp8_runtime_flags(tmp_path, capsys):
    """bench stream with an explicit runtime and FP8 block linears: the JSON says what ran."""
    import json
    assert main(["bench", "stream", "--model", "tiny", "--seconds", "2", "--backend", "ref", "--fp8",
                 "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "stream_tiny_cpu_ref_fp8.json").read_text())
    assert r["fp8_linears"] is True and r["runtime"]["ops_backend"] == "ref" and r["frames"] >= 24
    assert r["cost_per_video_second_s"] is None                # 2 s: no early/late windows
    assert r["real_time_factor"] > 0 and set(r["stage_ms_per_chunk"]) >= {"backbone", "refiner", "vae_decode"}


def test_noise_and_threads_keep_the_models_own_runtime():
    from lpm_rt.cli import _load, build_parser
    args = build_parser().parse_args(["demo", "--model", "tiny", "--noise", "fixed", "--threads", "1"])
    avatar = _load(args)
    assert avatar.model.cfg.runtime.noise == "fixed" and avatar.cfg.runtime.noise == "fixed"
    assert avatar.model.cfg.runtime.replace(noise="fresh") == lpm_rt.load("tiny").cfg.runtime


def test_guidance_flags_set_the_stream_and_refuse_bad_values():
    from lpm_rt.cli import _load, build_parser
    p = build_parser()
    avatar = _load(p.parse_args(["run", "--model", "tiny", "--speaker", "x.wav", "--out", "y.mp4",
                                 "--speaker-guidance", "2.5"]))
    s = avatar.model.cfg.stream
    assert s.speaker_guidance == 2.5 and s.listener_guidance == 1.0 and avatar.cfg.stream == s
    assert avatar.cfg.replace(stream=s.replace(speaker_guidance=1.0)) == lpm_rt.load("tiny").cfg
    assert _load(p.parse_args(["demo", "--model", "tiny"])).cfg.stream.speaker_guidance == 1.0
    with pytest.raises(SystemExit, match="guidance"):
        _load(p.parse_args(["demo", "--model", "tiny", "--listener-guidance", "-2"]))
