"""LPM-Bench-mini discriminates: ground truth near the top, the static reference at the floor."""

import json

from lpm_rt.world.bench import METRICS, main


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
    for f in ("bench_quality.md", "metrics.png", "mouth_vs_audio.png"):
        assert (tmp_path / f).stat().st_size > 100
