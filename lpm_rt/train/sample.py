"""Offline sampling of Base LPM (the bidirectional teacher) -- the ``base`` system of LPM-Bench-mini.

The teacher is not a streaming model: it generates whole clips. :class:`TeacherSampler` cuts a
conversation into windows of the teacher's training clip length (latent frames), and for each
window solves the flow ODE from fresh noise (Euler, ``steps`` levels, classifier-free guidance on
audio + text as in distillation) conditioned on that window's two audio tracks (with their real
audio context), the prompt's tags and the references; the VAE decodes each window on its own.
Windows are independent, so a seam every window is expected -- that is what the online model's
history cache removes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import RefKind
from ..model.text import tag_ids
from .data import _frames, _images, _track_mel
from .flow import Cond, ode_grid, teacher_ode

__all__ = ["TeacherSampler"]


class TeacherSampler:
    def __init__(self, src, steps: int = 16, guidance: float = 2.0, window: int = 0, seed: int = 0):
        from ..checkpoint import load_dir
        model, self.meta = load_dir(src)
        self.cfg = model.cfg
        s = self.cfg.stream
        self.net, self.vae = model.backbone.eval(), model.vae.eval()
        self.window = window or max(2 * s.chunk_frames + s.history_frames, s.time_limit)
        self.grid = ode_grid(steps, s.sigma_shift)
        self.guidance, self.seed = guidance, seed

    @torch.no_grad()
    def render(self, self_audio: np.ndarray, partner_audio: np.ndarray, rate: int, num_frames: int,
               prompt: str, refs: list) -> np.ndarray:
        """refs: [(HxWx3 uint8, kind name)]. Returns [num_frames, H, W, 3] uint8."""
        s, m = self.cfg.stream, self.cfg.model
        W, T = self.window, m.vae_temporal
        R = min(len(refs), s.reference_slots)
        ref_lat = kinds = None
        if R:
            img = _images([r[0] for r in refs[:R]], s.height, s.width)
            ref_lat = self.vae.encode_image(img).squeeze(2).transpose(0, 1)[None].contiguous()   # (1, z, R, h, w)
            kinds = torch.tensor([int(RefKind[str(k).upper()]) for _, k in refs[:R]])
        tags = torch.tensor([tag_ids(prompt, m.num_tags)])
        g = torch.Generator().manual_seed(self.seed)
        out = []
        for f0 in range(0, num_frames, W * T):
            a0 = int(round(f0 * rate / s.fps))
            start = max(a0 - rate, 0)                                       # up to 1 s of real context
            # the window's audio and 0.1 s past it (the resampler's kernel reaches far less): the
            # rest of the conversation changes nothing, and resampling it every window made a
            # 10-minute render quadratic in its length
            end = a0 + int(round(W * T * rate / s.fps)) + rate // 10
            mels = tuple(_track_mel(np.asarray(a[start:end], np.float32), a0 - start, rate, W, self.cfg)[None]
                         for a in (self_audio, partner_audio))
            cond = Cond(tags, mels, ref_lat, kinds)
            noise = torch.randn(1, m.vae_z_dim, W, s.latent_h, s.latent_w, generator=g)
            _, x0 = teacher_ode(self.net, noise, cond, self.grid, self.guidance, s.ref_time_index)
            video = self.vae.decode(x0)[0]                                 # (3, W*T, H, W) in [-1, 1]
            out.append(_frames(video))
        return np.concatenate(out)[:num_frames]
