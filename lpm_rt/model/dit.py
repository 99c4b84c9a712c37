"""The LPM DiT: Wan2.1's text-to-video transformer plus LPM's additions.

Shared with Wan2.1 (same parameter names and math, so Wan checkpoints load unchanged):
patch embedding (1,2,2) over VAE latents; sinusoidal timestep embedding -> 6 adaLN vectors per
block; self-attention with RMSNorm on q, k and 3-D RoPE; text cross-attention; GELU(tanh) FFN;
output head with its own modulation.

LPM additions (names outside Wan's key space, zero-initialised where they write the residual, so
a freshly loaded Wan checkpoint behaves as Wan):
* ``tag_embedding``   built-in prompt-tag vocabulary -> text_dim vectors (demo text conditioning).
* ``audio_encoder``   log-mel -> audio tokens per latent frame.
* ``blocks.i.norm_audio``, ``blocks.i.audio_attn``  frame-local audio cross-attention; even
  blocks read the speaker's tokens, odd blocks the listener's.
* ``ref_embedding``   per-kind embedding added to identity-reference tokens; reference tokens
  are noise-free (t = 0 modulation), attend only to references, and skip text/audio, so their
  K/V depend on the images alone and can be computed once and shared.

Attention is injected: a block computes q, k, v and hands them to an ``attend(q, k, v)``
callable that applies RoPE and either runs dense masked attention (full-sequence forward, see
``lpm_rt.model.attend``) or writes K/V into the paged cache and attends over it (streaming).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from .. import ops
from ..config import ModelConfig
from .attend import DenseAttention, block_causal_mask, token_positions
from .audio import AudioEncoder, audio_windows

__all__ = ["LPMDiT", "sinusoidal_embedding_1d", "lpm_only_keys"]


def sinusoidal_embedding_1d(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * 10000^(-i / (dim/2)). t: [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t.double()[..., None] * freqs
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class RawKV(NamedTuple):
    """A foreign stream's k (before its RMSNorm, which the attention kernel fuses) and v,
    [B, Lk, C] each: a chunk's audio projections, computed once per chunk (:meth:`LPMDiT.audio_kv`)
    and read by every denoising pass of the chunk."""
    k: torch.Tensor
    v: torch.Tensor


class GuidedKV(NamedTuple):
    """Audio guidance in one cross-attention: the chunk's :class:`RawKV`, that of silence and the
    gain g. The attention output is a0 + g (a - a0), a0 the output with silence: classifier-free
    guidance on this cross-attention's features. The output projection is affine, so this is the
    block's audio residual with its audio-dependent part scaled by g (g = 1: the plain
    attention; silent audio gives silence's output whatever g). A distilled student has no
    guidance of its own: its teacher's mouth follows the audio fully only under guidance."""
    kv: "RawKV | AbsorbedKV"
    null: "RawKV | AbsorbedKV"
    gain: float


class AbsorbedKV(NamedTuple):
    """A short foreign stream with the output projection absorbed into its values (fp8 block
    form, ``ops.cross_attention_out``): keys k [B, Lk, H, D] (``k_weight``: the RMSNorm weight
    the kernel applies, None for keys normed already) and vo [B, Lk, H, C], vo[:, j, h] =
    Wo[:, h] v[:, j, h]. A session's text (:meth:`LPMDiT.text_kv`) or a chunk's audio windows
    (:meth:`LPMDiT.audio_kv`), made once and read by every pass. ``split`` > 0: two streams
    back to back, keys [0, split) the unconditional one, guided by ``gain`` (:func:`absorbed_guided`)."""
    k: torch.Tensor
    vo: torch.Tensor
    k_weight: torch.Tensor | None
    split: int = 0
    gain: float = 1.0


def absorbed_guided(kv):
    """A :class:`GuidedKV` of two :class:`AbsorbedKV` as one: both streams' keys and values back to
    back (unconditional first), so that one kernel runs both softmaxes and weights them (1 - g, g).
    Anything else, or streams too long together for one key tile, is returned as it is."""
    if not (isinstance(kv, GuidedKV) and isinstance(kv.kv, AbsorbedKV)):
        return kv
    null, cond = kv.null, kv.kv
    if not ops.absorbs(null.k.shape[1] + cond.k.shape[1], cond.k.shape[-1]):
        return kv
    return AbsorbedKV(torch.cat([null.k, cond.k], 1), torch.cat([null.vo, cond.vo], 1), cond.k_weight,
                      null.k.shape[1], float(kv.gain))


class Attention(nn.Module):
    """Wan's attention projections: q, k, v, o and RMSNorm over the full width of q and k.
    ``kv_dim`` != dim makes it a cross-attention over a foreign stream (audio tokens)."""

    def __init__(self, dim: int, heads: int, eps: float, kv_dim: int | None = None):
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads, self.head_dim, self.q_dim = heads, dim // heads, dim
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(kv_dim, dim), nn.Linear(kv_dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def qkv(self, x, kv=None):
        kv = x if kv is None else kv
        q = self.norm_q(self.q(x)).unflatten(-1, (self.heads, self.head_dim))   # (..., Lq, H, D)
        k = self.norm_k(self.k(kv)).unflatten(-1, (self.heads, self.head_dim))  # (..., Lk, H, D)
        v = self.v(kv).unflatten(-1, (self.heads, self.head_dim))
        return q, k, v

    def _kv_raw(self, kv):
        """k (before its norm) and v of a foreign stream kv [B, Lk, kv_dim]: [B, Lk, C] each
        (one GEMM in the fp8 form)."""
        if getattr(self, "kv_fp8", None) is not None:
            kvp = self.kv_fp8(kv).unflatten(-1, (2, self.q_dim))
            return kvp[..., 0, :], kvp[..., 1, :]
        return self.k(kv), self.v(kv)

    def raw_kv(self, kv) -> RawKV:
        """:class:`RawKV` of a foreign stream kv [B, Lk, kv_dim] (one GEMM in the fp8 form)."""
        return RawKV(*self._kv_raw(kv))

    def kv(self, kv):
        """The keys and values of a foreign stream: kv [B, Lk, kv_dim] -> (k, v) [B, H, Lk, D]
        each, keys normed, laid out for :meth:`cross`. Fixed for a session's text: computed
        once, reused."""
        k, v = self._kv_raw(kv)
        k = self.norm_k(k)
        return (k.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2),
                v.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2))

    def cross_heads(self, x, kv):
        """Plain (unmasked, un-rotated) cross-attention before the output projection, q's (and
        for a raw stream k's) RMSNorm fused in (``ops.cross_attention``).
        x: [B, Lq, C] (or the fp8 form's (e4m3, scales) pair); kv: [B, Lk, kv_dim], its
        precomputed :meth:`kv` pair, its :class:`RawKV` projections, or a :class:`GuidedKV`
        (two attentions, combined). -> [B, Lq, C]."""
        heads = lambda t: t.unflatten(-1, (self.heads, self.head_dim))      # noqa: E731
        q = heads(self.q(x))

        def attend(kv):
            if isinstance(kv, RawKV):
                k, v, k_weight = heads(kv.k), heads(kv.v), self.norm_k.weight
            elif isinstance(kv, tuple):
                k, v, k_weight = kv[0].transpose(1, 2), kv[1].transpose(1, 2), None
            else:
                k, v = (heads(t) for t in self._kv_raw(kv))
                k_weight = self.norm_k.weight
            return ops.cross_attention(q, k, v, self.norm_q.weight, k_weight, self.norm_q.eps).flatten(2)

        if isinstance(kv, GuidedKV):                   # one q, two attentions, one lerp
            return torch.lerp(attend(kv.null), attend(kv.kv), kv.gain)
        return attend(kv)

    def cross(self, x, kv):
        """:meth:`cross_heads` then the output projection."""
        return self.o(self.cross_heads(x, kv))

    def stream_kv(self, kv, raw: bool):
        """The per-stream form of a foreign stream kv [B, Lk, kv_dim] (a session's text, a chunk's
        audio windows) that every pass reads: in the fp8 form, an :class:`AbsorbedKV` where
        ``ops.cross_attention_out`` takes its length; else :class:`RawKV` (``raw``: keys normed in
        the attention kernel) or the :meth:`kv` pair (keys normed here, once)."""
        if getattr(self, "kv_fp8", None) is None or not ops.absorbs(kv.shape[1], self.head_dim):
            return self.raw_kv(kv) if raw else self.kv(kv)
        k, v = self._kv_raw(kv)
        heads = lambda t: t.unflatten(-1, (self.heads, self.head_dim))      # noqa: E731
        if not raw:
            k = self.norm_k(k)
        B, L = v.shape[:2]
        vh = heads(v).flatten(0, 1).transpose(0, 1)                     # (H, B*L, D), a view
        # raw: a chunk's audio, absorbed every chunk, keeps Wo's [H, D, C] form; a session's text does not
        vo = torch.bmm(vh, self._o_heads(cache=raw)).view(self.heads, B, L, -1).permute(1, 2, 0, 3)
        return AbsorbedKV(heads(k), vo, self.norm_k.weight if raw else None)

    def _o_heads(self, cache: bool) -> torch.Tensor:
        """Wo^T split by input head, [H, D, C] in the output dtype: vo = v_h @ this[h]. ``cache``
        keeps it (a chunk's audio absorbs it every chunk; a C x C copy of the e4m3 weight, in
        the activation dtype), keyed by the weight's storage and version."""
        key = (self.o.w8_bits.data_ptr(), self.o.w8_bits._version, self.o.w_scale_bits._version)
        memo = getattr(self, "_o_heads_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        w = self.o.weight_as(torch.float32).t().reshape(self.heads, self.head_dim, -1).to(self.o.out_dtype)
        if cache:
            self._o_heads_memo = (key, w)
        return w

    def cross_out(self, x, kv, residual, next_norm=None):
        """``residual`` + the cross-attention with its output projection (fp8 form): one kernel
        (``ops.cross_attention_out``) for an :class:`AbsorbedKV` (or a guided pair of them), else
        :meth:`cross_heads` and the projection's GEMM with the residual in its epilogue.
        -> (out, normed): ``normed`` is ``norm_modulate(out, *next_norm, out_fp8=True)`` where the
        kernel fuses it (an AbsorbedKV; ``next_norm`` = (shift, scale, eps) per batch entry), else
        None (the caller norms)."""
        kv = absorbed_guided(kv)                   # (the online step merges once per chunk)
        absorbed = kv.kv if isinstance(kv, GuidedKV) else kv
        if not isinstance(absorbed, AbsorbedKV):
            return self.o(self.cross_heads(x, kv), residual=residual), None
        q = self.q(x).unflatten(-1, (self.heads, self.head_dim))

        def attend(a, norm=None):
            return ops.cross_attention_out(q, a.k, a.vo, self.norm_q.weight, a.k_weight, self.norm_q.eps, self.o.bias,
                                           residual=residual, next_norm=norm, split=a.split, gain=a.gain)
        if isinstance(kv, GuidedKV):     # too long for one tile: two kernels, lerp(r + a0, r + a, g) = r + lerp(a0, a, g)
            return torch.lerp(attend(kv.null), attend(kv.kv), kv.gain), None
        return attend(kv, next_norm) if next_norm is not None else (attend(kv), None)


class Block(nn.Module):
    """One DiT block. Wan2.1 layout + LPM audio cross-attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)
        # LPM: frame-local audio cross-attention (output zero-init: starts as a no-op)
        self.norm_audio = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.audio_attn = Attention(d, cfg.num_heads, cfg.eps, kv_dim=cfg.audio_dim)
        nn.init.zeros_(self.audio_attn.o.weight)
        nn.init.zeros_(self.audio_attn.o.bias)
        self.fp8 = False           # linears are FP8Linear: the fused form (lpm_rt.model.fp8)

    def forward(self, x, e, attend, context=None, audio=None, ref=None):
        """x: [B, N, C], N = F * T tokens of F frames; e: [B, F, 6, C] per-frame modulation
        (or [B, 1, 6, C] for all tokens); attend(q, k, v) -> [B, N, H, D];
        context: [B, L, C] text tokens (or this block's precomputed ``cross_attn.kv`` pair);
        audio: [B, F, Ka, audio_dim] frame-local audio windows, or this block's precomputed
        ``audio_attn.raw_kv`` of them (flattened to [B*F, Ka, C]).

        ``ref`` = (ref_tokens, e_ref, attend_ref): the reference tokens go through this block
        first, in the same call (their K/V feed ``attend``), and the call returns (x, ref_tokens).
        One call per block per forward is what FSDP needs: the block's weights are gathered once
        for both, and its backward sees every use of them."""
        if ref is not None:
            r = self._run(ref[0], ref[1], ref[2])
            return self._run(x, e, attend, context, audio), r
        return self._run(x, e, attend, context, audio)

    def _run(self, x, e, attend, context=None, audio=None):
        if self.fp8:
            return self._run_fp8(x, e, attend, context, audio)
        B, N, C = x.shape
        Fr = e.shape[1]
        T = N // Fr
        mod = self._modulation(e)                                              # (B, F, 1, 6, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(3)            # each (B, F, 1, C)

        def modulate(h, shift, scale):                                          # h: (B, N, C)
            y = ops.norm_modulate(h.view(B * Fr, T, C), shift.reshape(B * Fr, 1, C),
                                  scale.reshape(B * Fr, 1, C), self.eps)
            return y.view(B, N, C)

        def gated(y, gate):                                                     # y: (B, N, C)
            return (y.view(B, Fr, T, C) * gate).view(B, N, C).to(x.dtype)

        q, k, v = self.self_attn.qkv(modulate(x, shift1, scale1))
        x = x + gated(self.self_attn.o(attend(q, k, v).flatten(2)), gate1)
        if context is not None:
            x = x + self.cross_attn.cross(self.norm3(x), context)
        if audio is not None:
            h = self.norm_audio(x).view(B * Fr, T, C)                            # frame-local:
            a = audio if isinstance(audio, (RawKV, GuidedKV)) else audio.flatten(0, 1)       # (B*F, Ka, Da)
            x = x + self.audio_attn.cross(h, a).view(B, N, C)
        x = x + gated(self.ffn(modulate(x, shift2, scale2)), gate2)
        return x

    def _run_fp8(self, x, e, attend, context=None, audio=None):
        """The same block with FP8 linears (:mod:`lpm_rt.model.fp8`): the adaLN norms emit e4m3
        activations with per-token scales for the fused q|k|v GEMM and ffn.0, and every residual add (gated or
        not) is the epilogue of the GEMM that produces it. Rows are laid out [B*F, T] so the
        per-frame gates broadcast over a frame's tokens without a copy."""
        B, N, C = x.shape
        Fr = e.shape[1]
        T = N // Fr
        mod = self._modulation(e)                                              # (B, F, 1, 6, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.reshape(B * Fr, 1, C) for m in mod.unbind(3))
        sa = self.self_attn
        h = ops.norm_modulate(x.view(B * Fr, T, C), shift1, scale1, self.eps, out_fp8=True)
        qkv = sa.qkv_fp8(h).view(B, N, 3, C)                                   # one GEMM for q|k|v
        q, k, v = (qkv[:, :, j].unflatten(-1, (sa.heads, sa.head_dim)) for j in range(3))
        # the RMSNorms of q and k run in the cache write (paged attention) or in torch (dense)
        att = attend(q, k, v, norm=(sa.norm_q.weight, sa.norm_k.weight, sa.norm_q.eps)).reshape(B * Fr, T, C)
        x = sa.o(att, residual=x.view(B * Fr, T, C), gate=gate1).view(B, N, C)
        h = None       # the next norm's e4m3 rows, where an absorbed cross-attention's kernel made them
        if context is not None:
            x, h = self.cross_attn.cross_out(self._affine_norm("norm3", x), context, residual=x,
                                             next_norm=self._norm_rows("norm_audio") if audio is not None else None)
        if audio is not None:
            if h is None:
                h = self._affine_norm("norm_audio", x.view(B * Fr, T, C))
            else:
                h = (h[0].view(B * Fr, T, C), h[1].view(B * Fr, T))
            a = audio if isinstance(audio, (RawKV, GuidedKV, AbsorbedKV)) else audio.flatten(0, 1)
            x, h = self.audio_attn.cross_out(h, a, residual=x.view(B * Fr, T, C), next_norm=(shift2, scale2, self.eps))
            x = x.view(B, N, C)
        if h is None:
            h = ops.norm_modulate(x.view(B * Fr, T, C), shift2, scale2, self.eps, out_fp8=True)
        y = self.ffn[0](h, act="gelu_tanh")
        return self.ffn[2](y, residual=x.view(B * Fr, T, C), gate=gate2).view(B, N, C)

    def _modulation(self, e):
        """modulation + e, fp32 [B, F, 1, 6, C]. For a memoized timestep embedding
        (``LPMDiT.embed_timestep``: the online step's fixed noise levels) the sum is memoized
        with it, per block and version of this block's modulation, so it costs no launch."""
        memo = getattr(e, "_lpm_memo", None)
        if memo is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return (self.modulation.unsqueeze(0).float() + e.float()).unsqueeze(2)
        key = (id(self), self.modulation._version, self.modulation.data_ptr())
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = (self.modulation.unsqueeze(0).float() + e.float()).unsqueeze(2)
        return hit

    def _norm_rows(self, name: str):
        """An affine LayerNorm of the fp8 form as a ``next_norm`` request (shift, scale, eps) of a
        kernel that fuses it; None where the norm is not one (Identity)."""
        bits = getattr(self, f"{name}_mod_bits", None)
        if bits is None:
            return None
        mod = bits.view(torch.float32)
        return mod[0], mod[1], self.eps

    def _affine_norm(self, name: str, x):
        """An affine LayerNorm of the fp8 form: ``norm_modulate`` with e4m3 output (the pair
        the next FP8 GEMM takes); other norms (Identity) as they are. x: [B, L, C]."""
        norm = self._norm_rows(name)
        if norm is None:
            return getattr(self, name)(x)
        return ops.norm_modulate(x, *norm, out_fp8=True)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.patch_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        """x: [B, N, C]; e: [B, F, C] time embedding per frame."""
        B, N, C = x.shape
        Fr = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(0) + e.float().unsqueeze(2)).unsqueeze(2).unbind(3)
        h = self.norm(x).float().view(B, Fr, N // Fr, C) * (1 + scale) + shift  # (B, F, T, C)
        return self.head(h.view(B, N, C).to(x.dtype))


# Parameter prefixes that exist only in LPM (a Wan2.1 checkpoint lacks them).
LPM_ONLY_PREFIXES = ("tag_embedding.", "audio_encoder.", "ref_embedding.")
LPM_ONLY_BLOCK_PARTS = (".norm_audio.", ".audio_attn.")


class LPMDiT(nn.Module):
    """Wan2.1 DiT + LPM additions. Used as Base LPM, as the online backbone and as the refiner."""

    def __init__(self, cfg: ModelConfig, num_layers: int | None = None):
        super().__init__()
        self.cfg = cfg
        self._time_memo: dict = {}               # embed_time of the online step's fixed noise levels
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(num_layers or cfg.num_layers))
        self.head = Head(cfg)
        # LPM additions
        self.tag_embedding = nn.Embedding(cfg.num_tags, cfg.text_dim)
        self.audio_encoder = AudioEncoder(cfg)
        self.ref_embedding = nn.Embedding(cfg.num_ref_kinds, d)
        nn.init.normal_(self.ref_embedding.weight, std=0.02)

    # ---- embeddings -------------------------------------------------------------------------
    def embed_time(self, t: torch.Tensor):
        """t: [B, F] timesteps in [0, 1000] -> (e [B, F, C], e0 [B, F, 6, C])."""
        e = self.time_embedding(sinusoidal_embedding_1d(self.cfg.freq_dim, t).to(self.patch_embedding.weight.dtype))
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def embed_timestep(self, value: float, frames: int, device):
        """:meth:`embed_time` of one timestep ``value`` on all ``frames`` frames. Without grad it
        is memoized: the online step's noise levels are the same few every chunk, and their
        embedding (~15 small launches) is computed once per value, frames, device, dtype and
        version of the weights it is made of (an optimizer step or a load bumps the version)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():   # traced: fused, not memoized
            return self.embed_time(torch.full((1, frames), value, device=device))
        params = (*self.time_embedding.parameters(), *self.time_projection.parameters())
        key = (float(value), frames, str(device), self.patch_embedding.weight.dtype,
               tuple(p._version for p in params), tuple(p.data_ptr() for p in params))
        hit = self._time_memo.get(key)
        if hit is None:
            if len(self._time_memo) >= 64:
                self._time_memo.clear()
            hit = self._time_memo[key] = self.embed_time(torch.full((1, frames), value, device=device))
            hit[1]._lpm_memo = {}             # the blocks' adaLN vectors of this timestep (Block._modulation)
        return hit

    def embed_patches(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: [B, C_z, F, H, W] -> tokens [B, F * h * w, C] (time-major, then rows)."""
        x = self.patch_embedding(latents.to(self.patch_embedding.weight.dtype))        # (B, C, F, h, w)
        return x.flatten(2).transpose(1, 2).contiguous()                              # (B, F*h*w, C)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """context: [B, L, text_dim] precomputed embeddings -> [B, L, C]."""
        return self.text_embedding(context.to(self.patch_embedding.weight.dtype))

    def embed_refs(self, ref_latents: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """ref_latents: [B, C_z, R, H, W], kinds: [R] -> tokens [B, R * h * w, C]."""
        tok = self.embed_patches(ref_latents)
        R = ref_latents.shape[2]
        kind = self.ref_embedding(kinds.to(tok.device)).repeat_interleave(tok.shape[1] // R, dim=0)  # (R*T, C)
        return tok + kind

    def unpatchify(self, x: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
        """[B, F*h*w, patch_dim] -> latents [B, C_z, F, h*ph, w*pw]."""
        pt, ph, pw = self.cfg.patch_size
        B = x.shape[0]
        x = x.view(B, frames, h, w, pt, ph, pw, self.cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(B, self.cfg.out_dim, frames * pt, h * ph, w * pw)

    # ---- passes -----------------------------------------------------------------------------
    def ref_pass(self, ref_tokens: torch.Tensor, attend_for_layer) -> None:
        """Run reference tokens through every block (t = 0, self-attention among references only);
        ``attend_for_layer(i)`` returns the attend callable of layer i, which keeps their K/V."""
        B = ref_tokens.shape[0]
        _, e0 = self.embed_time(torch.zeros(B, 1, device=ref_tokens.device))
        r = ref_tokens
        for i, blk in enumerate(self.blocks):
            r = blk(r, e0, attend_for_layer(i))

    def text_kv(self, context: torch.Tensor) -> list:
        """Embedded text [B, L, C] -> every block's text cross-attention (k, v) (or, in the fp8
        form, :class:`AbsorbedKV` for a short prompt): a session's prompt is fixed, so its keys
        and values are computed once per session, not per pass."""
        return [blk.cross_attn.stream_kv(context, raw=False) for blk in self.blocks]

    def audio_kv(self, audio) -> list:
        """(speaker, listener) windows [B, F, Ka, Da] -> every block's audio :class:`RawKV` (or,
        in the fp8 form, :class:`AbsorbedKV`) (even blocks read the speaker, odd the listener):
        a chunk's audio is the same for all of its denoising passes, so its projections are
        computed once per chunk, not per pass."""
        return [blk.audio_attn.stream_kv(audio[i % 2].flatten(0, 1), raw=True) for i, blk in enumerate(self.blocks)]

    def video_pass(self, x_tokens, t, attend_for_layer, context=None, audio=None):
        """x_tokens: [B, F*T, C]; t: [B, F] (or its :meth:`embed_time` pair); context: [B, L, C]
        embedded text, the list :meth:`text_kv` made of it, or None; audio: (speaker, listener)
        windows [B, F, Ka, Da] each, the list :meth:`audio_kv` made of them, or None.
        Returns [B, F*T, patch_dim]."""
        e, e0 = t if isinstance(t, tuple) else self.embed_time(t)
        x = x_tokens
        for i, blk in enumerate(self.blocks):
            a = audio[i] if isinstance(audio, list) else None if audio is None else audio[i % 2]
            c = context[i] if isinstance(context, list) else context
            x = blk(x, e0, attend_for_layer(i), c, a)
        return self.head(x, e)

    def joint_pass(self, ref_tokens, x_tokens, t, ref_attend_for_layer, attend_for_layer, context=None,
                   audio=None):
        """:meth:`ref_pass` then :meth:`video_pass` with each block called once for both (see
        ``Block.forward``'s ``ref``): the same numbers, block by block. The training forms use it."""
        B = ref_tokens.shape[0]
        _, e0r = self.embed_time(torch.zeros(B, 1, device=ref_tokens.device))
        e, e0 = self.embed_time(t)
        x, r = x_tokens, ref_tokens
        for i, blk in enumerate(self.blocks):
            a = None if audio is None else audio[i % 2]
            x, r = blk(x, e0, attend_for_layer(i), context, a, ref=(r, e0r, ref_attend_for_layer(i)))
        return self.head(x, e)

    def encode_audio(self, mel: torch.Tensor, speaker: bool = False) -> torch.Tensor:
        """mel: [B, (context + F) * 16, n_mels] (leading context frames first) -> windows
        [B, F, (context + 1) * A, audio_dim] for the frame-local audio attention. The speaker's
        track (``speaker``) reads only the newest ``speaker_audio_context`` + 1 frames of it when
        that is set, with the newest slots of ``audio_encoder.window``."""
        ctx, slot = self.cfg.audio_context, getattr(self.audio_encoder, "window", None)
        keep = self.cfg.speaker_audio_context
        if speaker and keep is not None and keep < ctx:
            mel = mel[:, (ctx - keep) * self.audio_encoder.mel_per_frame:]
            slot = None if slot is None else slot[ctx - keep:]
            ctx = keep
        return audio_windows(self.audio_encoder(mel), ctx, slot)

    def encode_audio_tracks(self, mels) -> tuple:
        """(speaker, listener) log-mels -> their windows (:meth:`encode_audio`)."""
        return self.encode_audio(mels[0], speaker=True), self.encode_audio(mels[1])

    def forward(self, x, t, context, audio_mel=None, refs=None, ref_kinds=None,
                chunk_frames=None, window=None, frame_offset=0, ref_time_index=-8):
        """Whole-clip forward (Base LPM, and the online model's training form).

        x: [B, z, F, H, W] noisy latents; t: [B, F] timesteps (0-1000, per frame);
        context: [B, L, text_dim] text embeddings; audio_mel: (speaker, listener) log-mels
        [B, (audio_context + F) * 16, n_mels] or None; refs: [B, z, R, H, W] reference latents
        with ref_kinds [R] (or None); chunk_frames/window: block-causal mask with a history
        window (None: bidirectional). Returns the flow-matching velocity [B, z, F, H, W].
        """
        cfg = self.cfg
        B, _, Fr, H, W = x.shape
        h, w = H // cfg.patch_size[1], W // cfg.patch_size[2]
        tpf = h * w
        vid_rope = token_positions(torch.arange(Fr) + frame_offset, h, w, cfg.rope_dims, cfg.rope_theta)
        ref_rope = None
        if refs is not None:
            R = refs.shape[2]
            ref_rope = token_positions(ref_time_index - torch.arange(R), h, w, cfg.rope_dims, cfg.rope_theta)
        mask = block_causal_mask(Fr, tpf, chunk_frames, window)
        attn = DenseAttention(ref_rope, vid_rope, None if mask is None else mask.to(x.device))
        audio = None if audio_mel is None else self.encode_audio_tracks(audio_mel)
        tokens, ctx = self.embed_patches(x), self.embed_text(context)
        if refs is not None:
            out = self.joint_pass(self.embed_refs(refs, ref_kinds.to(x.device)), tokens, t, attn.ref, attn.video,
                                  ctx, audio)
        else:
            out = self.video_pass(tokens, t, attn.video, ctx, audio)
        return self.unpatchify(out, Fr, h, w)

    def init_weights(self, seed: int = 0) -> "LPMDiT":
        """Deterministic initialisation of every parameter (untrained presets): matrices and
        modulation tables ~ N(0, 1/fan_in), biases 0, norm scales 1; residual writers start small."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    fan_in = p.shape[-1] if "modulation" in name else math.prod(p.shape[1:])
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)
            if hasattr(self.audio_encoder, "window"):
                self.audio_encoder.window.zero_()          # starts as the plain window
            for blk in self.blocks:
                blk.audio_attn.o.weight.mul_(0.1)
            self.head.head.weight.mul_(0.1)
        return self


def lpm_only_keys(keys) -> list:
    """Keys of an LPMDiT state dict that a Wan2.1 checkpoint does not have."""
    return [k for k in keys if k.startswith(LPM_ONLY_PREFIXES) or any(p in k for p in LPM_ONLY_BLOCK_PARTS)]
