"""Data parallel: torchrun with 2 gloo processes on CPU. Each rank trains on different clips; with
gradients all-reduced the ranks must end with identical weights (without it they diverge)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent


COMMON = ["--source", "blobsrc:make", "--batch", "1", "--frames", "4", "--warmup", "1", "--threads", "1",
          "--rank-digest"]


def _torchrun(*args, expect: int | None = 0):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lpm_rt.train", *map(str, args), *COMMON]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert (r.returncode != 0) if expect is None else (r.returncode == expect), r.stderr[-3000:]


def _digests(out):
    d0, d1 = ((out / f"digest-rank{r}.txt").read_text() for r in (0, 1))
    assert d0 == d1, "ranks hold different weights"
    return d0


def test_torchrun_two_process_gloo(tmp_path):
    out = tmp_path / "ddp"
    _torchrun("base", "--preset", "tiny", "--steps", "2", "--vae-steps", "2", "--out", out)
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


def test_fsdp_matches_data_parallel_and_resumes_exactly(tmp_path):
    """--fsdp shards the DiT blocks over 2 gloo processes: the trained weights equal plain data
    parallel's to float rounding, checkpoints gather whole tensors (lpm_rt.load reads them), and
    a distill run killed mid-stage resumes into sharded weights and optimizer state bit-exactly."""
    base = ["base", "--preset", "tiny", "--steps", "3", "--vae-steps", "2"]
    _torchrun(*base, "--out", tmp_path / "ddp")
    _torchrun(*base, "--out", tmp_path / "fsdp", "--fsdp")
    _digests(tmp_path / "fsdp")
    for part in ("backbone", "vae"):
        a, b = (load_file(str(tmp_path / d / f"{part}.safetensors")) for d in ("ddp", "fsdp"))
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, f"{part}: FSDP vs data parallel differ by {worst:.2e}"
    distill = ["distill", "--teacher", tmp_path / "fsdp", "--steps", "2", "--ode-steps", "3", "--fake-updates", "1",
               "--long-factor", "2", "--ckpt-every", "1", "--fsdp"]
    _torchrun(*distill, "--out", tmp_path / "whole")
    _torchrun(*distill, "--out", tmp_path / "killed", "--stop-after", "5", expect=None)   # exit 3 -> torchrun fails
    _torchrun(*distill, "--out", tmp_path / "killed")
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "whole")
    import lpm_rt
    assert lpm_rt.load(str(tmp_path / "killed")).trained


def test_fsdp_needs_processes(tmp_path):
    from lpm_rt.train import main
    with pytest.raises(RuntimeError, match="torchrun"):
        main(["base", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "x"), "--fsdp"])
