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

from ..cache import TORCH_ACT_DTYPES, PagePool, StreamCache
from ..config import LPMConfig
from .attend import PagedAttention, RefPrefill, token_positions
from .audio import AUDIO_RATE, MEL_HOP, MEL_WIN, log_mel
from .dit import GuidedKV, LPMDiT, absorbed_guided
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
    replay: object = None              # StepReplay (runtime.cuda_graphs), made on the first chunk
    noises: object = None              # the session's one noise draw (runtime.noise == "fixed")
    null_audio: object = None          # every backbone block's audio K/V of silence (audio guidance)

    def close(self):
        self.replay = None
        self.bb_cache.close()
        self.rf_cache.close()


class StepReplay:
    """One session's per-chunk step (audio front end, every backbone pass with its cache writes,
    the refiner pass) as a function of static buffers, so that one CUDA graph replays it every
    chunk (``RuntimeConfig.cuda_graphs``).

    What changes per chunk is copied into static inputs before the replay: the two tracks' PCM
    windows, the chunk's noise draws (from the session's host generator, as the plain step draws
    them), its RoPE tables, and the backbone's block table, length and slot mapping (the history
    ring moves; shapes do not: the table is always ``max_pages`` wide and the kernels read the
    length on the device). The refiner's cache holds [refs | chunk] and never commits, so its
    view is copied once. Host bookkeeping (ring commit, RoPE re-basing) and the streaming decode
    stay outside the graph. On CUDA the step runs once eagerly (kernels compiled or loaded,
    autotuning done, timestep embeddings memoized), is captured, and replays; the output buffer
    is overwritten by the next chunk. Elsewhere the same static-buffer code runs eagerly, which is
    what the CPU tests compare with the plain step."""

    def __init__(self, model: "OnlineLPM", state: StreamState, inputs: "ChunkInputs", capture: bool):
        self.model, self.state = model, state
        self.inputs = inputs.clone()
        self.bb_attn, self.rf_attn = self.inputs.attention(state)
        self.graph = None
        self.out = self._run()                    # this chunk's result; on CUDA also the warm-up
        if capture:
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._run()
            self.graph.replay()                   # capture does not execute: this chunk again

    def _run(self):
        i = self.inputs
        return self.model._denoise(self.state, i.spk, i.lis, i.noises, i.rope, self.bb_attn, self.rf_attn)

    def __call__(self, inputs: "ChunkInputs") -> torch.Tensor:
        self.inputs.copy_(inputs)
        if self.graph is None:
            self.out = self._run()
        else:
            self.graph.replay()
        return self.out


@dataclass
class ChunkInputs:
    """Everything one chunk's device work reads besides weights and pages, on the device: PCM
    windows [1, n] of both tracks, the noise draws [backbone_steps + 1, z, C, h, w] (the last
    one re-noises the refiner's input), RoPE (cos, sin), and each cache's (block_table, kv_len,
    slot_mapping)."""
    spk: torch.Tensor
    lis: torch.Tensor
    noises: torch.Tensor
    rope: tuple
    bb_view: tuple
    rf_view: tuple

    def clone(self) -> "ChunkInputs":
        c = lambda ts: tuple(t.clone() for t in ts)          # noqa: E731
        return ChunkInputs(self.spk.clone(), self.lis.clone(), self.noises.clone(), c(self.rope), c(self.bb_view),
                           c(self.rf_view))

    def attention(self, state: StreamState) -> tuple:
        """(backbone, refiner) :class:`PagedAttention` over these views and RoPE tables."""
        return tuple(PagedAttention(cache.pool, *view, self.rope, cache.k_shift)
                     for cache, view in ((state.bb_cache, self.bb_view), (state.rf_cache, self.rf_view)))

    def copy_(self, src: "ChunkInputs") -> None:
        """Copy what changes between chunks (all but the refiner's view, which never does)."""
        pairs = [(self.spk, src.spk), (self.lis, src.lis), (self.noises, src.noises),
                 *zip(self.rope, src.rope), *zip(self.bb_view, src.bb_view)]
        for dst, s in pairs:
            if dst.shape != s.shape:
                raise ValueError(f"chunk input of shape {tuple(s.shape)} where the replay holds {tuple(dst.shape)}")
            dst.copy_(s, non_blocking=True)


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
        dev, vdt = rt.device, TORCH_ACT_DTYPES[rt.dtype]          # fp8k pools: V pages in the activations' dtype
        self.pools = (PagePool(m.num_layers, n * per_bb, s.page_size, m.num_heads, m.head_dim, rt.kv_dtype, dev, vdt),
                      PagePool(m.refiner_layers, n * per_rf, s.page_size, m.num_heads, m.head_dim, rt.kv_dtype, dev,
                               vdt))
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
                key = self._ref_key(ref_latents, ref_kinds)
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
            if (s.speaker_guidance, s.listener_guidance) != (1.0, 1.0):
                state.null_audio = self._null_audio()
        except Exception:
            state.close()
            raise
        return state

    @staticmethod
    def _ref_key(ref_latents, ref_kinds) -> str:
        """Sessions with equal references share their pinned pages: the key is their bytes' hash."""
        return hashlib.sha256(ref_latents.float().cpu().numpy().tobytes() + bytes(ref_kinds.tolist())).hexdigest()

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

    def _null_audio(self) -> list:
        """Every backbone block's audio K/V of a silent chunk: the unconditional side of audio
        guidance (:class:`~lpm_rt.model.dit.GuidedKV`). The same computation as a chunk of
        digital silence, so a silent track gives exactly silence's output at any gain. The
        refiner is not guided: it only re-noises and refines the backbone's output (guiding it
        too measured no better: LPM-Bench-mini quick lip sync 0.272 vs 0.294 backbone-only)."""
        s, m = self.cfg.stream, self.cfg.model
        n = (MEL_WIN - MEL_HOP) + (m.audio_context + s.chunk_frames) * m.vae_temporal * (AUDIO_RATE // s.fps)
        dev = self.backbone.patch_embedding.weight.device
        mel = log_mel(torch.zeros(1, n, device=dev), m.n_mels)
        with torch.no_grad():
            return self.backbone.audio_kv(self.backbone.encode_audio_tracks((mel, mel)))

    def _audio_kv(self, net, mels, null) -> list:
        """``net``'s per-block audio K/V of the chunk, guided (``speaker_guidance`` in the blocks
        that read the speaker, ``listener_guidance`` in the others) where the gain is not 1."""
        kvs = net.audio_kv(net.encode_audio_tracks(mels))
        if null is None:
            return kvs
        s = self.cfg.stream
        gains = (s.speaker_guidance, s.listener_guidance)
        # absorbed streams: both as one, for one kernel per pass (merged once per chunk)
        return [kv if gains[i % 2] == 1.0 else absorbed_guided(GuidedKV(kv, n, gains[i % 2]))
                for i, (kv, n) in enumerate(zip(kvs, null))]

    def _refine(self, state: StreamState, x0, noise, mels, attn) -> torch.Tensor:
        """The refiner pass: x0 re-noised to refiner_sigma, one step over [refs | chunk]."""
        sr = self.cfg.stream.refiner_sigma
        xr = (1 - sr) * x0 + sr * noise
        rf_audio = self.refiner.audio_kv(self.refiner.encode_audio_tracks(mels))
        vr = self._chunk_pass(self.refiner, attn, xr, sr, state.rf_context, rf_audio)
        return xr - sr * vr

    # ---- one chunk ----------------------------------------------------------------------------
    def _chunk_pass(self, net, attn, x, sigma, context, audio):
        """One denoising pass of ``net`` over the chunk latents x [1, z, C, h', w'] at noise
        level ``sigma``; K/V of the chunk are (re)written into the chunk's pages."""
        s, m = self.cfg.stream, self.cfg.model
        C = s.chunk_frames
        h, w = s.latent_h // m.patch_size[1], s.latent_w // m.patch_size[2]
        out = net.video_pass(net.embed_patches(x), net.embed_timestep(1000.0 * sigma, C, x.device), attn.layer,
                             context, audio)
        return net.unpatchify(out, C, h, w)

    def _chunk_inputs(self, state: StreamState, spk_audio, lis_audio) -> ChunkInputs:
        """Host side of one chunk: the noise draws (on the session's host generator, one per use
        and in the order of use: identical on every device; with ``runtime.noise == "fixed"`` the
        first chunk's draws, kept for the session), the chunk's RoPE tables and both caches' views
        (block table [refs | history | chunk], length, slot mapping), on the device."""
        s, m = self.cfg.stream, self.cfg.model
        C = s.chunk_frames
        shape = (1, m.vae_z_dim, C, s.latent_h, s.latent_w)
        dev, dt = self.backbone.patch_embedding.weight.device, self.backbone.patch_embedding.weight.dtype
        if state.noises is None:
            noises = torch.stack([torch.randn(shape, generator=state.generator)
                                  for _ in range(len(s.sigmas) + 1)]).to(dev, dt)
            if self.cfg.runtime.noise == "fixed":     # one draw per session: every chunk starts from it
                state.noises = noises
        else:
            noises = state.noises
        h, w = s.latent_h // m.patch_size[1], s.latent_w // m.patch_size[2]
        rope = tuple(r.to(dev) for r in token_positions(torch.arange(state.pos, state.pos + C), h, w,
                                                          m.rope_dims, m.rope_theta))
        views = (tuple(t.to(dev, non_blocking=True) for t in cache.begin_chunk())
                 for cache in (state.bb_cache, state.rf_cache))
        return ChunkInputs(spk_audio.to(dev), lis_audio.to(dev), noises, rope, *views)

    def _denoise(self, state: StreamState, spk, lis, noises, rope, bb_attn, rf_attn, mark=None, capture=None):
        """The chunk's device work: log-mel, audio tokens and every block's audio k/v (once per
        network and chunk; the encoders are frame-local), the backbone from pure noise -- every
        pass writes the chunk's K/V into its pages, so the last pass (noise level history_t)
        leaves the noisy history behind -- then the refiner's one step. Returns the refined
        latents [1, z, C, h, w]."""
        mark = mark or (lambda stage: None)
        sig, n_mels = self.cfg.stream.sigmas, self.cfg.model.n_mels
        mels = (log_mel(spk, n_mels), log_mel(lis, n_mels))
        bb_audio = self._audio_kv(self.backbone, mels, state.null_audio)
        mark("audio")
        x = noises[0]
        for i, sigma in enumerate(sig):
            v = self._chunk_pass(self.backbone, bb_attn, x, sigma, state.bb_context, bb_audio)
            x0 = x - sigma * v
            if i + 1 < len(sig):
                x = (1 - sig[i + 1]) * x0 + sig[i + 1] * noises[i + 1]
            elif capture is not None:
                capture.append((x, v))
        mark("backbone")
        latents = self._refine(state, x0, noises[-1], mels, rf_attn)
        mark("refiner")
        return latents

    @torch.no_grad()
    def step(self, state: StreamState, spk_audio, lis_audio, capture=None):
        """Generate one chunk.

        spk_audio / lis_audio: [1, MEL_WIN - MEL_HOP + (audio_context + C) * samples_per_latent]
        float32 at 24 kHz: the chunk's audio preceded by the audio context frames and the mel
        window's left context. Returns video [1, 3, frames_per_chunk, H, W] in [-1, 1].
        ``capture`` (a list) receives (input latents, velocity) of the last backbone step.
        With ``runtime.cuda_graphs`` the device work replays from one session's static buffers
        (:class:`StepReplay`; stages are then timed as one, "step").
        """
        s, m = self.cfg.stream, self.cfg.model
        C = s.chunk_frames
        inputs = self._chunk_inputs(state, spk_audio, lis_audio)
        mark = state.timer or (lambda stage: None)
        if not self.cfg.runtime.cuda_graphs or capture is not None:
            latents = self._denoise(state, inputs.spk, inputs.lis, inputs.noises, inputs.rope,
                                    *inputs.attention(state), mark, capture)
        else:
            if state.replay is None:              # first chunk: set up (and on CUDA capture) the replay
                state.replay = StepReplay(self, state, inputs, capture=inputs.noises.device.type == "cuda")
                latents = state.replay.out
            else:
                latents = state.replay(inputs)
            mark("step")
        # the chunk's pages join the history ring, the oldest frames leave
        state.bb_cache.commit_chunk()
        state.frame += C
        state.pos += C
        if state.pos + C > s.time_limit:          # keep RoPE time bounded: shift the history back
            shift = state.pos - len(state.bb_cache.history)
            state.bb_cache.rebase(shift, m.rope_dims, m.rope_theta)
            state.pos -= shift
        # 5. streaming decode
        video = self.vae.decode(latents.to(self.vae.dec_out.weight.dtype), state.dec_cache)
        mark("vae_decode")
        return video
