"""Every tensor the streaming step touches lives on the runtime's device.

CI has no GPU, and a CPU run cannot see a host tensor meeting a device tensor: on one device
everything is "the same device". Here the model runs on ``meta`` inside torch's FakeTensorMode,
which refuses any op whose tensor inputs sit on two devices (FakeTensorDeviceMismatchError),
as CUDA does. Shapes only: nothing is computed, so the reference key hash (it reads the
references' bytes) is replaced by a constant. The first H200 run failed on exactly such
mixes (reference kinds, the reference slot mapping and the mel filterbank left on the host);
this test fails on each of them.
"""

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lpm_rt import ops
from lpm_rt.config import RuntimeConfig, preset
from lpm_rt.model.audio import AUDIO_RATE, MEL_HOP, MEL_WIN
from lpm_rt.model.online import OnlineLPM
from lpm_rt.session import reference_latents


class OneDevice(TorchDispatchMode):
    """Stricter than FakeTensorMode, which lets some ops (embedding's indices) take a host
    tensor: any op but a copy whose tensor arguments (0-d host scalars aside) span two devices."""
    MOVES = {"_to_copy", "copy_", "copy", "to", "lift_fresh", "lift_fresh_copy", "_copy_from"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name not in self.MOVES:
            devs = {t.device for t in tree_leaves((args, kwargs or {}))
                    if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devs) > 1:
                raise RuntimeError(f"{func}: tensors on {sorted(map(str, devs))} (one device expected)")
        return func(*args, **(kwargs or {}))


def test_fake_mode_refuses_mixed_devices():
    """The premise: without it every test below would pass vacuously."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(Exception, match="device"):
            torch.zeros(2, 3, device="meta") + torch.zeros(2, 3)
        with OneDevice(), pytest.raises(RuntimeError, match="one device"):
            torch.nn.functional.embedding(torch.tensor([0, 1]), torch.zeros(4, 3, device="meta"))


@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")   # the timestep memo's key
@pytest.mark.parametrize("backend,kv,graphs,fp8", [
    ("ref", "fp8", False, False), ("ref", "bf16", True, False), ("triton", "fp8", True, True)])
def test_stream_step_keeps_every_tensor_on_the_device(backend, kv, graphs, fp8):
    cfg = preset("tiny")
    cfg = cfg.replace(runtime=RuntimeConfig(device="meta", dtype="bf16", kv_dtype=kv, max_sessions=1,
                                            cuda_graphs=graphs))
    model = OnlineLPM(cfg).init_weights(0)
    if fp8:
        model.quantize_fp8_(block=None)
    model._ref_key = lambda latents, kinds: "refs"          # hashing reads bytes: none here
    s, m = cfg.stream, cfg.model
    n = (MEL_WIN - MEL_HOP) + (m.audio_context + s.chunk_frames) * m.vae_temporal * (AUDIO_RATE // s.fps)
    chunks = 2 * max(s.history_frames, s.chunk_frames) // s.chunk_frames + 2     # past a RoPE re-basing
    prev = ops.get_backend()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()), OneDevice():
            for net in (model.backbone, model.refiner, model.vae):
                net.to("meta")
            ops.set_backend(backend)
            images = [np.zeros((s.height, s.width, 3), np.uint8)] * 2        # host images, as a session gets them
            refs = reference_latents(model, images)                          # the VAE encoder on the device
            assert refs.device.type == "meta"
            state = model.open_stream(refs, torch.tensor([0, 2]), "calm", seed=0)   # kinds on the host
            for _ in range(chunks):                                      # audio on the host, as a session pushes it
                video = model.step(state, torch.randn(1, n), torch.randn(1, n))
                assert video.device.type == "meta"
                assert tuple(video.shape) == (1, 3, s.frames_per_chunk, s.height, s.width)
            state.close()
    finally:
        ops.set_backend(prev)
