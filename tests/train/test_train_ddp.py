"""Data parallel: torchrun with 2 gloo processes on CPU. Each rank trains on different clips; with
gradients all-reduced the ranks must end with identical weights (without it they diverge)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent


def test_torchrun_two_process_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lpm_rt.train", "base", "--preset", "tiny", "--steps", "2", "--vae-steps", "2",
           "--out", str(out), "--source", "blobsrc:make", "--batch", "1", "--frames", "4", "--warmup", "1",
           "--threads", "1", "--rank-digest"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    d0 = (out / "digest-rank0.txt").read_text()
    d1 = (out / "digest-rank1.txt").read_text()
    assert d0 == d1, "ranks hold different weights: gradients were not all-reduced"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["world"] == 2 for r in recs)
    from lpm_rt.config import preset
    from lpm_rt.model.online import OnlineLPM
    init = OnlineLPM(preset("tiny")).init_weights(0)
    for part in ("vae", "backbone"):
        trained = load_file(str(out / f"{part}.safetensors"))
        own = getattr(init, part).state_dict()
        assert any(not torch.equal(trained[k], own[k]) for k in own), f"{part} did not train"
