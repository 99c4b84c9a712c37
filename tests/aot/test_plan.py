"""The roofline planner reproduces ../shared/ANCHORS.md and prints a usable plan."""

import pytest

from lpm_compile import plan as planner

# ANCHORS.md, "The job, in FLOPs": one denoising pass, 1 s chunk (6 latent frames), window 12 + 3 refs
ANCHORS = [
    # model, W, H, tokens/frame, total TFLOP, linear, attention, KV fp8 GB
    ("lpm-17b", 832, 480, 1560, 518, 263, 251, 9.6),
    ("edge-1.3b", 832, 480, 1560, 84, 26, 57, 2.2),
    ("edge-1.3b", 320, 320, 400, 10.6, None, None, 0.6),
    ("edge-1.3b", 256, 256, 256, 6.0, None, None, 0.4),
]


@pytest.mark.parametrize("model,w,h,tpf,total,linear,attention,kv", ANCHORS)
def test_reproduces_anchor_table(model, w, h, tpf, total, linear, attention, kv):
    a = planner.anchor_pass(model, w, h, chunk_frames=6, history=12, refs=3)
    assert a["tokens_per_frame"] == tpf
    # the table rounds to its last digit (84 is 26.06 + 57.4 rounded up): 1% on totals
    assert a["total"] == pytest.approx(total, rel=0.01), a
    if linear is not None:
        assert round(a["linear"]) == linear, a
        assert round(a["attention"]) == attention, a
    assert round(a["kv_fp8_gb"], 1) == kv, a


def test_24fps_needs_about_a_petaflop_for_17b():
    a = planner.anchor_pass("lpm-17b", 832, 480)
    assert 2 * a["total"] == pytest.approx(1040, rel=0.01)          # "TFLOP/s for 24 fps, 2 passes"


def test_plan_orin_edge_256(capsys):
    p = planner.plan("edge-1.3b", "orin-agx", 256, 256, chunk_frames=6)
    assert 0 < p.fps < p.fps_ceiling
    st = p.stages
    # two backbone passes of the anchor's pass, plus the refiner, decode and audio
    one = planner.anchor_pass("edge-1.3b", 256, 256)
    assert st["backbone linear"]["flops"] / 1e12 == pytest.approx(2 * one["linear"], rel=1e-6)
    assert set(st) >= {"backbone linear", "backbone attention", "refiner linear", "vae decode", "audio"}
    assert all(s["flops"] > 0 and s["seconds"] > 0 for s in st.values())
    assert p.memory["total"] < planner.DEVICES["orin-agx"].memory
    assert planner.main(["--target", "orin-agx", "--model", "edge-1.3b", "--resolution", "256x256"]) == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "fps" in out and "vae decode" in out


def test_plan_flags_what_does_not_fit(capsys):
    assert planner.main(["--target", "orin-nano", "--model", "lpm-17b", "--resolution", "832x480"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert planner.main(["--target", "h100", "--model", "tiny", "--resolution", "100x100"]) == 2


def test_plan_with_the_kernels_as_measured(capsys):
    """--kernels measured: the linear and attention stages at the throughput this project's kernels
    reached on the GPU (h100), not at an assumed fraction of peak; bf16 pages (--kv-bytes 2) trade
    page memory for the faster attention; a device nobody timed is refused."""
    roof = planner.plan("lpm-17b", "h100", 832, 480)
    meas = planner.plan("lpm-17b", "h100", 832, 480, measured=True)
    bf16 = planner.plan("lpm-17b", "h100", 832, 480, measured=True, kv_bytes=2)
    m = planner.MEASURED["h100"]
    att = meas.stages["backbone attention"]
    assert att["seconds"] == pytest.approx(att["flops"] / m["attention"][1])       # compute-bound at 273 TFLOP/s
    lin = meas.stages["backbone linear"]
    assert lin["seconds"] == pytest.approx(max(lin["flops"] / m["linear"], lin["bytes"] / (3.35e12 * 0.7)))
    assert meas.fps < bf16.fps < roof.fps and meas.stages["vae decode"] == roof.stages["vae decode"]
    assert bf16.memory["kv pages (backbone)"] == pytest.approx(2 * meas.memory["kv pages (backbone)"])
    assert planner.main(["--target", "h100", "--model", "lpm-17b", "--resolution", "832x480", "--kernels", "measured"]) == 0
    out = capsys.readouterr().out
    assert "as measured on NVIDIA H200" in out and "gpu-20261204-3" in out
    assert planner.main(["--target", "orin-agx", "--model", "edge-1.3b", "--resolution", "256x256",
                         "--kernels", "measured"]) == 2
    assert "no kernel measurements for orin-agx" in capsys.readouterr().err
