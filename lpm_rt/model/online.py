"""Online LPM: causal backbone over chunks with a noisy-history paged cache, a one-step refiner,
and the streaming VAE decoder -- the model the runtime streams.

Per session, :class:`StreamState` holds both networks' cache views, the decoder's temporal
cache, the prompt's text keys/values per block (fixed for the session) and the audio context. :meth:`OnlineLPM.step` turns one chunk of audio
(log-mel, with its left context) into ``frames_per_chunk`` video frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..cache import PagePool, StreamCache
from ..config import LPMConfig
from .attend import PagedAttention, RefPrefill, token_positions
from .audio import log_mel
from .dit import LPMDiT
from .text import tag_context
from .vae import VAE, DecoderCache

__all__ = ["OnlineLPM", "StreamState"]


@dataclass
class StreamState:
    bb_cache: StreamCache
    rf_cache: StreamCache
    dec_cache: DecoderCache
    bb_context: list                   # per block: text cross-attention (k, v), backbone
    rf_context: list                   # per block: text cross-attention (k, v), refiner
    generator: torch.Generator
    frame: int = 0                     # latent frames streamed so far
    pos: int = 0                       # RoPE time index of the next chunk's first frame
    timer: object = None               # optional callable(stage) marking stage ends (benchmarks)
    rf_replay: object = None           # RefinerReplay (runtime.cuda_graphs), made on the first chunk

    def close(self):
        self.rf_replay = None
        self.bb_cache.close()
        self.rf_cache.close()


class RefinerReplay:
    """The refiner pass of one session as a function of static buffers, so that one CUDA graph
    replays it every chunk (``RuntimeConfig.cuda_graphs``).

    Per chunk, what changes is copied into static inputs: the backbone's x0, the re-noising
    noise, the two log-mels and the chunk's RoPE tables. The refiner's cache holds
    [refs | chunk] and never commits, so its block table, length and slot mapping are the same
    every chunk: device copies made once. On CUDA the pass runs once eagerly (kernels compiled
    or loaded, autotuning done, timestep embeddings memoized), is captured, and replays; the
    output buffer is overwritten by the next chunk. Elsewhere the same static-buffer code runs
    eagerly, which is what the CPU tests compare with the plain step."""

    def __init__(self, model: "OnlineLPM", state: StreamState, x0, noise, mels, rope, capture: bool):
        self.model, self.state = model, state
        self.x0, self.noise = x0.clone(), noise.clone()
        self.mels = tuple(m.clone() for m in mels)
        self.cos, self.sin = (r.clone() for r in rope)
        cache, dev = state.rf_cache, x0.device
        table, kv_len, slots = cache.begin_chunk()
        self.attn = PagedAttention(cache.pool, table.to(dev), kv_len.to(dev), slots.to(dev), (self.cos, self.sin),
                                   cache.k_shift)
        self.graph = None
        self.out = self._run()                    # this chunk's result; on CUDA also the warm-up
        if capture:
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._run()
            self.graph.replay()                   # capture does not execute: this chunk again

    def _run(self):
        return self.model._refine(self.state, self.x0, self.noise, self.mels, self.attn)

    def __call__(self, x0, noise, mels, rope) -> torch.Tensor:
        self.x0.copy_(x0)
        self.noise.copy_(noise)
        for dst, src in zip(self.mels, mels):
            dst.copy_(src)
        self.cos.copy_(rope[0])
        self.sin.copy_(rope[1])
        if self.graph is None:
            self.out = self._run()
        else:
            self.graph.replay()
        return self.out


class OnlineLPM(nn.Module):
    def __init__(self, cfg: LPMConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = LPMDiT(cfg.model)
        self.refiner = LPMDiT(cfg.model, cfg.model.refiner_layers)
        self.vae = VAE(cfg.model)
        self.pools = None

    def quantize_fp8_(self, block: int | None = None) -> "OnlineLPM":
        """In place: both networks' block linears -> FP8 GEMMs with fused epilogues
        (:func:`lpm_rt.model.fp8.quantize_blocks_`; per-channel weight scales, or 1 x ``block``)."""
        from .fp8 import quantize_blocks_
        quantize_blocks_(self.backbone, block)
        quantize_blocks_(self.refiner, block)
        return self

    def init_weights(self, seed: int = 0) -> "OnlineLPM":
        self.backbone.init_weights(seed)
        self.refiner.init_weights(seed + 1)
        self.vae.init_weights(seed + 2)
        return self

    # ---- pools and sessions -----------------------------------------------------------------
    def make_pools(self, max_sessions: int | None = None):
        """Allocate both networks' page pools once, sized for ``max_sessions`` sessions with
        distinct references."""
        s, m, rt = self.cfg.stream, self.cfg.model, self.cfg.runtime
        n = max_sessions or rt.max_sessions
        per_bb = (s.reference_slots + s.history_frames + s.chunk_frames) * s.pages_per_frame
        per_rf = (s.reference_slots + s.chunk_frames) * s.pages_per_frame
        dev = rt.device
        self.pools = (PagePool(m.num_layers, n * per_bb, s.page_size, m.num_heads, m.head_dim, rt.kv_dtype, dev),
                      PagePool(m.refiner_layers, n * per_rf, s.page_size, m.num_heads, m.head_dim, rt.kv_dtype, dev))
        return self.pools

    @torch.no_grad()
    def open_stream(self, ref_latents, ref_kinds, prompt: str, seed: int) -> StreamState:
        """ref_latents: [1, z, R, h, w] (R may be 0), ref_kinds: [R]; prompt: tags (str) or text
        embeddings [L, text_dim]. Reserves pages (raises CapacityError), runs the reference pass
        of both networks unless the same references are already pinned, embeds the prompt."""
        if self.pools is None:
            self.make_pools()
        s = self.cfg.stream
        bb = StreamCache(self.pools[0], s)
        try:
            rf = StreamCache(self.pools[1], s, history_frames=0)
        except Exception:
            bb.close()
            raise
        state = StreamState(bb, rf, DecoderCache(), None, None, torch.Generator().manual_seed(seed))
        try:
            R = ref_latents.shape[2]
            if R:
                key = hashlib.sha256(ref_latents.float().cpu().numpy().tobytes()
                                     + bytes(ref_kinds.tolist())).hexdigest()
                for net, cache in ((self.backbone, bb), (self.refiner, rf)):
                    slots, fresh = cache.attach_refs(key, R)
                    if fresh:
                        try:
                            self._prefill_refs(net, cache.pool, slots, ref_latents, ref_kinds, cache.k_shift)
                        except Exception:
                            cache.detach_refs()
                            raise
            state.bb_context = self.backbone.text_kv(self.backbone.embed_text(self._text(self.backbone, prompt)))
            state.rf_context = self.refiner.text_kv(self.refiner.embed_text(self._text(self.refiner, prompt)))
        except Exception:
            state.close()
            raise
        return state

    def _text(self, net, prompt):
        """A tag prompt (str) or precomputed embeddings [L, text_dim] -> [1, L, text_dim]."""
        if isinstance(prompt, str):
            return tag_context(net, prompt)
        ctx = torch.as_tensor(prompt).to(net.tag_embedding.weight)
        if ctx.dim() != 2 or ctx.shape[1] != self.cfg.model.text_dim or not torch.isfinite(ctx).all():
            raise ValueError(f"text embeddings must be finite [L, {self.cfg.model.text_dim}], got {tuple(ctx.shape)}")
        return ctx[None]

    def _prefill_refs(self, net, pool, slots, ref_latents, ref_kinds, k_shift=None):
        s, m = self.cfg.stream, self.cfg.model
        R = ref_latents.shape[2]
        h, w = s.latent_h // m.patch_size[1], s.latent_w // m.patch_size[2]
        rope = tuple(r.to(ref_latents.device) for r in
                     token_positions(s.ref_time_index - torch.arange(R), h, w, m.rope_dims, m.rope_theta))
        net.ref_pass(net.embed_refs(ref_latents, ref_kinds), RefPrefill(pool, slots, rope, k_shift).layer)

    def _refine(self, state: StreamState, x0, noise, mels, attn) -> torch.Tensor:
        """The refiner pass: x0 re-noised to refiner_sigma, one step over [refs | chunk]."""
        sr = self.cfg.stream.refiner_sigma
        xr = (1 - sr) * x0 + sr * noise
        rf_audio = tuple(self.refiner.encode_audio(x) for x in mels)
        vr = self._chunk_pass(self.refiner, attn, xr, sr, state.rf_context, rf_audio)
        return xr - sr * vr

    # ---- one chunk ----------------------------------------------------------------------------
    def _paged(self, cache, rope, dev) -> PagedAttention:
        """The chunk's view of ``cache``: block table [refs | history | chunk] and slot mapping,
        built once per chunk (host bookkeeping, copied to the device) and shared by its passes."""
        table, kv_len, slots = cache.begin_chunk()
        return PagedAttention(cache.pool, table.to(dev, non_blocking=True), kv_len.to(dev, non_blocking=True),
                              slots.to(dev, non_blocking=True), rope, cache.k_shift)

    def _chunk_pass(self, net, attn, x, sigma, context, audio):
        """One denoising pass of ``net`` over the chunk latents x [1, z, C, h', w'] at noise
        level ``sigma``; K/V of the chunk are (re)written into the chunk's pages."""
        s, m = self.cfg.stream, self.cfg.model
        C = s.chunk_frames
        h, w = s.latent_h // m.patch_size[1], s.latent_w // m.patch_size[2]
        out = net.video_pass(net.embed_patches(x), net.embed_timestep(1000.0 * sigma, C, x.device), attn.layer,
                             context, audio)
        return net.unpatchify(out, C, h, w)

    @torch.no_grad()
    def step(self, state: StreamState, spk_audio, lis_audio, capture=None):
        """Generate one chunk.

        spk_audio / lis_audio: [1, MEL_WIN - MEL_HOP + (audio_context + C) * samples_per_latent]
        float32 at 24 kHz: the chunk's audio preceded by the audio context frames and the mel
        window's left context. Returns video [1, 3, frames_per_chunk, H, W] in [-1, 1].
        ``capture`` (a list) receives (input latents, velocity) of the last backbone step.
        """
        s, m = self.cfg.stream, self.cfg.model
        C, sig = s.chunk_frames, s.sigmas
        shape = (1, m.vae_z_dim, C, s.latent_h, s.latent_w)
        g = state.generator
        dev, dt = self.backbone.patch_embedding.weight.device, self.backbone.patch_embedding.weight.dtype

        def noise():                      # drawn on the host generator: identical on every device
            return torch.randn(shape, generator=g).to(dev, dt)
        # 1. audio features: log-mel once, tokens per network (encoders are frame-local);
        #    the chunk's RoPE tables, once for both networks
        h, w = s.latent_h // m.patch_size[1], s.latent_w // m.patch_size[2]
        rope = tuple(r.to(dev) for r in token_positions(torch.arange(state.pos, state.pos + C), h, w,
                                                          m.rope_dims, m.rope_theta))
        mels = (log_mel(spk_audio.to(dev), m.n_mels), log_mel(lis_audio.to(dev), m.n_mels))
        bb_audio = tuple(self.backbone.encode_audio(x) for x in mels)
        mark = state.timer or (lambda stage: None)
        mark("audio")
        # 2. backbone: denoise from pure noise; every pass writes the chunk's K/V into its
        #    pages, so the last pass (noise level history_t) leaves the noisy history behind
        x = noise()
        attn = self._paged(state.bb_cache, rope, dev)
        for i, sigma in enumerate(sig):
            v = self._chunk_pass(self.backbone, attn, x, sigma, state.bb_context, bb_audio)
            x0 = x - sigma * v
            if i + 1 < len(sig):
                x = (1 - sig[i + 1]) * x0 + sig[i + 1] * noise()
            elif capture is not None:
                capture.append((x, v))
        # 3. advance the history ring: the chunk's pages join it, the oldest frames leave
        state.bb_cache.commit_chunk()
        mark("backbone")
        # 4. refiner: one step over [refs | chunk], input re-noised to refiner_sigma
        noise_r = noise()
        if not self.cfg.runtime.cuda_graphs:
            latents = self._refine(state, x0, noise_r, mels, self._paged(state.rf_cache, rope, dev))
        elif state.rf_replay is None:             # first chunk: set up (and on CUDA capture) the replay
            state.rf_replay = RefinerReplay(self, state, x0, noise_r, mels, rope, capture=dev.type == "cuda")
            latents = state.rf_replay.out
        else:
            latents = state.rf_replay(x0, noise_r, mels, rope)
        state.frame += C
        state.pos += C
        if state.pos + C > s.time_limit:          # keep RoPE time bounded: shift the history back
            shift = state.pos - len(state.bb_cache.history)
            state.bb_cache.rebase(shift, m.rope_dims, m.rope_theta)
            state.pos -= shift
        mark("refiner")
        # 5. streaming decode
        video = self.vae.decode(latents.to(self.vae.dec_out.weight.dtype), state.dec_cache)
        mark("vae_decode")
        return video
