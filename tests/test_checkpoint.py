"""Model directories: round trip, hashes checked before loading, no pickle."""

import json

import numpy as np
import pytest
import torch

import lpm_rt
from lpm_rt import ArtifactError
from lpm_rt.checkpoint import load_dir, save
from lpm_rt.config import preset
from lpm_rt.model.online import OnlineLPM


def _frames(avatar, seconds=0.34):
    pcm = (0.2 * np.sin(np.arange(int(seconds * 24000)) / 7)).astype(np.float32)
    with avatar.open_session(seed=1) as s:
        s.push_audio(pcm, 24000)
        s.flush()
        return np.stack([f.image for f in s.frames()])


def test_round_trip_streams_identically(tmp_path):
    model = OnlineLPM(preset("tiny")).init_weights(11)
    save(model, tmp_path / "m", extra={"trained": False})
    a = lpm_rt.load("tiny", seed=11)
    b = lpm_rt.load(str(tmp_path / "m"))
    assert not b.trained
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert np.array_equal(_frames(a), _frames(b))


@pytest.mark.parametrize("damage", ["flip", "delete", "config"])
def test_tampering_is_refused(tmp_path, damage):
    d = save(OnlineLPM(preset("tiny")).init_weights(0), tmp_path / "m")
    f = d / "refiner.safetensors"
    if damage == "flip":
        b = bytearray(f.read_bytes())
        b[-3] ^= 0xFF
        f.write_bytes(bytes(b))
        match = "refiner.safetensors: sha256 mismatch"
    elif damage == "delete":
        f.unlink()
        match = "refiner.safetensors: missing"
    else:
        meta = json.loads((d / "config.json").read_text())
        meta["format_version"] = 99
        (d / "config.json").write_text(json.dumps(meta))
        match = "format"
    with pytest.raises(ArtifactError, match=match):
        load_dir(d)


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="neither a preset"):
        lpm_rt.load(str(tmp_path / "nothing-here"))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    from lpm_rt.config import RuntimeConfig
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ArtifactError, match="CUDA device"):
        lpm_rt.load("tiny", runtime=RuntimeConfig(ops_backend="triton"))
    assert lpm_rt.ops.get_backend() == "ref"


def test_cuda_graphs_on_cuda_need_kernels_that_read_lengths_on_the_device():
    from lpm_rt.config import RuntimeConfig
    with pytest.raises(ValueError, match="triton or aot"):
        RuntimeConfig(device="cuda", cuda_graphs=True)
    RuntimeConfig(device="cuda", cuda_graphs=True, ops_backend="aot")
    RuntimeConfig(cuda_graphs=True)                  # CPU: the static-buffer path runs eagerly
