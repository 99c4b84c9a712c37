"""Flow-matching math shared by the trainers, in the model's own terms.

Convention (Wan2.1 / rectified flow): ``x_sigma = (1 - sigma) x0 + sigma noise``, ``t = 1000 sigma``,
the network predicts ``v = noise - x0``, so ``x0 = x_sigma - sigma v``.

Three ways to run a network over a clip:

* :func:`velocity`        -- ``LPMDiT.forward``'s math (bidirectional teacher; or block-causal).
* :func:`causal_forward`  -- the online backbone *exactly as the runtime streams it*, every chunk
  at its own step: a "two-copy" sequence ``[history copy | query copy]``. The history copy holds
  each chunk's last-step input (noise level ``history_t``) under the block-causal mask with the
  history window -- that is what the runtime's noisy-history cache holds; the query copy holds
  each chunk at the step being trained and sees [refs | history copy within the window | itself].
  One forward trains every chunk at once (teacher forcing / self-rollout, see the tests).
* :class:`KVRollout`      -- a batched dense K/V cache that streams chunk by chunk with the runtime's
  step loop (:func:`rollout`), O(frames) instead of re-running the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ModelConfig, StreamConfig
from ..model.audio import AUDIO_RATE, LOG_MEL_SILENCE, MEL_HOP
from ..model.attend import DenseAttention, token_positions
from ..model.rope import rope_apply

__all__ = ["Cond", "randn", "add_noise", "sample_sigma", "velocity", "guided_velocity", "teacher_ode",
           "ode_grid", "causal_forward", "two_copy_mask", "KVRollout", "rollout", "Rollout",
           "SILENCE_MEL"]

SILENCE_MEL = LOG_MEL_SILENCE    # log-mel of digital silence: the unconditional audio of guidance


@dataclass
class Cond:
    """Conditions of a batch. ``tag_ids`` are embedded by each network with its own tag table."""

    tag_ids: torch.Tensor            # [B, L]
    mels: tuple                      # (speaker, listener) [B, (ctx + F) * 16, n_mels]
    refs: torch.Tensor | None        # [B, z, R, h, w] reference latents, or None
    ref_kinds: torch.Tensor | None   # [R]

    def context(self, net) -> torch.Tensor:
        return net.tag_embedding(self.tag_ids)                     # (B, L, text_dim)

    def null(self, keep_refs: bool = True) -> "Cond":
        """Unconditional branch of guidance: silent audio, the null tag; references kept."""
        return Cond(torch.zeros_like(self.tag_ids[:, :1]),
                    tuple(torch.full_like(m, SILENCE_MEL) for m in self.mels),
                    self.refs if keep_refs else None, self.ref_kinds if keep_refs else None)

    def window(self, f0: int, f1: int, model: ModelConfig) -> "Cond":
        """Conditions of latent frames [f0, f1) (audio keeps its ``audio_context`` lead frames)."""
        k = mel_per_latent(model)
        return Cond(self.tag_ids, tuple(m[:, f0 * k:(f1 + model.audio_context) * k] for m in self.mels),
                    self.refs, self.ref_kinds)


def mel_per_latent(m: ModelConfig) -> int:
    """Log-mel frames per latent frame (16: 4 video frames at 24 fps, hop 250 at 24 kHz)."""
    return m.vae_temporal * (AUDIO_RATE // 24) // MEL_HOP


def randn(shape, gen: torch.Generator, device) -> torch.Tensor:
    """Noise from a CPU generator (reproducible on any device), placed on ``device``."""
    return torch.randn(shape, generator=gen).to(device)


def _rope(t_index, h, w, m, device):
    return tuple(r.to(device) for r in token_positions(t_index, h, w, m.rope_dims, m.rope_theta))


def add_noise(x0, noise, sigma):
    """sigma: [B] or [B, F] -> x_sigma with sigma broadcast over (z, [F], h, w)."""
    s = sigma.view(sigma.shape[0], 1, -1, 1, 1) if sigma.dim() == 2 else sigma.view(-1, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def sample_sigma(n: int, gen: torch.Generator, shift: float = 1.0, lo: float = 0.0, hi: float = 1.0):
    """Training noise levels: logit-normal (SD3's choice: most weight mid-way), then Wan's shift,
    clipped to [lo, hi]."""
    u = torch.sigmoid(torch.randn(n, generator=gen))
    s = shift * u / (1 + (shift - 1) * u)
    return s.clamp(lo, hi)


def velocity(net, x, t, cond: Cond, chunk_frames=None, window=None, frame_offset=0, ref_time_index=-8):
    """``LPMDiT.forward`` on a batch's conditions: x [B, z, F, h, w], t [B, F] -> v [B, z, F, h, w]."""
    return net(x, t, cond.context(net), cond.mels, cond.refs, cond.ref_kinds, chunk_frames=chunk_frames,
               window=window, frame_offset=frame_offset, ref_time_index=ref_time_index)


def guided_velocity(net, x, t, cond: Cond, scale: float, **kw):
    """Classifier-free guidance on audio and text together: v_u + scale (v_c - v_u)."""
    if scale == 1.0:
        return velocity(net, x, t, cond, **kw)
    vc = velocity(net, x, t, cond, **kw)
    vu = velocity(net, x, t, cond.null(), **kw)
    return vu + scale * (vc - vu)


def ode_grid(steps: int, shift: float, must_include=()) -> list:
    """Descending noise levels 1 -> 0 of an Euler ODE solve (shifted), with ``must_include``
    (the student's step levels) inserted so its inputs lie exactly on the trajectory."""
    lin = [1.0 - i / steps for i in range(steps + 1)]
    grid = {round(shift * s / (1 + (shift - 1) * s), 6) for s in lin} | {round(float(s), 6) for s in must_include}
    return sorted(grid, reverse=True)


@torch.no_grad()
def teacher_ode(net, noise, cond: Cond, grid, scale: float, ref_time_index: int = -8):
    """Euler solve of the probability-flow ODE dx/dsigma = v from ``noise`` at grid[0] = 1.
    Returns ({sigma: x_sigma}, x0)."""
    B, Fr = noise.shape[0], noise.shape[2]
    x, traj = noise, {}
    for s, s_next in zip(grid[:-1], grid[1:]):
        traj[s] = x
        t = torch.full((B, Fr), 1000.0 * s, device=x.device)
        x = x + (s_next - s) * guided_velocity(net, x, t, cond, scale, ref_time_index=ref_time_index)
    traj[grid[-1]] = x
    return traj, x


# ---- the runtime's chunk-causal form ---------------------------------------------------------------

def two_copy_mask(frames: int, q_start: int, tokens_per_frame: int, chunk: int, window: int):
    """Boolean mask [(F + Fq) T, (F + Fq) T] over [history copy (frames 0..F) | query copy
    (frames q_start..F)]. History frame i sees history frames of chunks <= its own within the
    window (the runtime's block-causal form); query frame i sees history frames of *earlier*
    chunks within the window and the query frames of its own chunk."""
    f = torch.arange(frames)
    q = torch.arange(q_start, frames)
    first_f, first_q = (f // chunk) * chunk, (q // chunk) * chunk
    hh = (f[None] < (first_f + chunk)[:, None]) & (f[None] >= (first_f - window)[:, None])   # (F, F)
    qh = (f[None] < first_q[:, None]) & (f[None] >= (first_q - window)[:, None])             # (Fq, F)
    qq = (q[None] // chunk) == (q[:, None] // chunk)                                           # (Fq, Fq)
    top = torch.cat([hh, hh.new_zeros(len(f), len(q))], 1)
    bottom = torch.cat([qh, qq], 1)
    m = torch.cat([top, bottom], 0)
    return m.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def causal_forward(net, x_hist, x_q, sigma_q, cond: Cond, stream: StreamConfig, q_start: int = 0,
                   frame_offset: int = 0):
    """Velocity of the query copy. x_hist: [B, z, F, h, w] each chunk's last-step input (at
    ``stream.history_t``); x_q: [B, z, F - q_start, h, w] the chunks being trained (frames q_start..F,
    q_start a multiple of chunk_frames); sigma_q: [B, F - q_start] their noise levels.
    Equals the runtime's streamed step of every query chunk (see tests/train/test_train_flow.py)."""
    m = net.cfg
    B, _, Fr, H, W = x_hist.shape
    Fq = Fr - q_start
    h, w = H // m.patch_size[1], W // m.patch_size[2]
    pos = torch.arange(Fr) + frame_offset
    dev = x_hist.device
    rope = _rope(torch.cat([pos, pos[q_start:]]), h, w, m, dev)
    mask = two_copy_mask(Fr, q_start, h * w, stream.chunk_frames, stream.history_frames)
    ref_rope = None
    if cond.refs is not None:
        ref_rope = _rope(stream.ref_time_index - torch.arange(cond.refs.shape[2]), h, w, m, dev)
    attn = DenseAttention(ref_rope, rope, mask.to(x_hist.device))
    audio = net.encode_audio_tracks(cond.mels)                   # (B, F, Ka, Da) each
    audio = tuple(torch.cat([a, a[:, q_start:]], 1) for a in audio)
    tokens = torch.cat([net.embed_patches(x_hist), net.embed_patches(x_q)], 1)  # (B, (F + Fq) T, C)
    t = torch.cat([torch.full((B, Fr), stream.history_t, device=dev), 1000.0 * sigma_q], 1)
    ctx = net.embed_text(cond.context(net))
    if cond.refs is not None:
        out = net.joint_pass(net.embed_refs(cond.refs, cond.ref_kinds), tokens, t, attn.ref, attn.video, ctx, audio)
    else:
        out = net.video_pass(tokens, t, attn.video, ctx, audio)
    return net.unpatchify(out[:, Fr * h * w:], Fq, h, w)


class KVRollout:
    """Batched dense stand-in for the runtime's paged cache: reference K/V pinned, history K/V of
    the last ``window`` frames kept (rotated), the chunk's own K/V rewritten at every step and
    committed after the last one -- the noisy-history cache, the runtime's semantics."""

    def __init__(self, net, cond: Cond, stream: StreamConfig):
        m = net.cfg
        self.net, self.stream = net, stream
        self.h, self.w = stream.latent_h // m.patch_size[1], stream.latent_w // m.patch_size[2]
        self.device = cond.tag_ids.device
        self.ref = DenseAttention(None, None)
        if cond.refs is not None:
            R = cond.refs.shape[2]
            self.ref.ref_rope = _rope(stream.ref_time_index - torch.arange(R), self.h, self.w, m, self.device)
            net.ref_pass(net.embed_refs(cond.refs, cond.ref_kinds), self.ref.ref)
        self.hist: dict = {}
        self.pending: dict = {}
        self.rope = None

    def begin(self, frame0: int):
        m = self.net.cfg
        C = self.stream.chunk_frames
        self.rope = _rope(torch.arange(frame0, frame0 + C), self.h, self.w, m, self.device)

    def layer(self, i):
        def attend(q, k, v):
            q, k = rope_apply(q, *self.rope), rope_apply(k, *self.rope)
            self.pending[i] = (k, v)
            ks, vs = [k], [v]
            if i in self.hist:
                ks.insert(0, self.hist[i][0])
                vs.insert(0, self.hist[i][1])
            if i in self.ref.ref_kv:
                ks.insert(0, self.ref.ref_kv[i][0])
                vs.insert(0, self.ref.ref_kv[i][1])
            K, V = torch.cat(ks, 1), torch.cat(vs, 1)                           # (B, Lk, H, D)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), K.transpose(1, 2), V.transpose(1, 2))
            return out.transpose(1, 2)
        return attend

    def commit(self):
        keep = self.stream.history_frames * self.h * self.w
        for i, (k, v) in self.pending.items():
            if i in self.hist:
                k, v = torch.cat([self.hist[i][0], k], 1), torch.cat([self.hist[i][1], v], 1)
            start = max(k.shape[1] - keep, 0)                                   # oldest frames leave
            self.hist[i] = (k[:, start:], v[:, start:])
        self.pending = {}


@dataclass
class Rollout:
    x_hist: torch.Tensor      # [B, z, F, h, w] each chunk's last-step input (the noisy history)
    inputs: list              # per backbone step k: [B, z, F, h, w] each chunk's input at step k
    x0: torch.Tensor          # [B, z, F, h, w] the backbone's output (x0 of the last step)


def rollout(net, cond: Cond, frames: int, stream: StreamConfig, gen: torch.Generator) -> Rollout:
    """Stream ``frames`` latent frames chunk by chunk exactly as ``OnlineLPM.step`` does
    (pure noise, ``stream.sigmas`` steps with re-noising, last step's K/V kept as history).
    Call under ``torch.no_grad()`` (gradients go through :func:`causal_forward`)."""
    m = net.cfg
    C, sig = stream.chunk_frames, stream.sigmas
    B = cond.tag_ids.shape[0]
    shape = (B, m.vae_z_dim, C, stream.latent_h, stream.latent_w)
    cache = KVRollout(net, cond, stream)
    dev = cache.device
    ctx = net.embed_text(cond.context(net))
    audio = net.encode_audio_tracks(cond.mels)                    # (B, F, Ka, Da)
    ins = [[] for _ in sig]
    hist, outs = [], []
    for f0 in range(0, frames, C):
        cache.begin(f0)
        a = tuple(x[:, f0:f0 + C] for x in audio)
        x = randn(shape, gen, dev)
        for k, s in enumerate(sig):
            ins[k].append(x)
            t = torch.full((B, C), 1000.0 * s, device=dev)
            v = net.unpatchify(net.video_pass(net.embed_patches(x), t, cache.layer, ctx, a), C, cache.h, cache.w)
            x0 = x - s * v
            if k + 1 < len(sig):
                x = (1 - sig[k + 1]) * x0 + sig[k + 1] * randn(shape, gen, dev)
        cache.commit()
        hist.append(ins[-1][-1])
        outs.append(x0)
    return Rollout(torch.cat(hist, 2), [torch.cat(i, 2) for i in ins], torch.cat(outs, 2))
