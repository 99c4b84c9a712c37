"""scripts/cold_start.py on the CPU: one fresh process streams the demo to its first frame, the
phases add up, and --profile-open names where opening the session went (the GPU run asks it
why opening took 6 s there against half a second here)."""

from __future__ import annotations

import json

from _util import script


def test_cold_start_times_each_phase_and_profiles_the_open(tmp_path):
    out = tmp_path / "cold.json"
    assert script("cold_start").main(["--model", "demo", "--runs", "1", "--profile-open", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    run = res["all"][0]
    phases = [run[k] for k in ("import_s", "load_s", "open_s", "first_frame_s")]
    assert all(p > 0 for p in phases) and sum(phases) < run["process_to_first_frame_s"]
    assert run["frame_shape"] == [128, 128, 3]
    names = [name for name, _ in run["open_profile"]]
    assert any("open_session" in n for n in names) and len(names) == 25
    assert all(t <= run["open_s"] + 1e-3 for _, t in run["open_profile"])     # cumulative times inside it
