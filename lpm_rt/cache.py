"""Paged history cache (DESIGN section 3).

A :class:`PagePool` holds, for every layer of one network, K/V pages
``[layers, num_pages, page_size, heads, head_dim]`` (fp32/bf16/fp16, or fp8 e4m3 with per-page
per-head scales ``[layers, num_pages, heads]``), and a free list. A page id names the same slot in
every layer, so one block table serves all layers.

A session's :class:`StreamCache` owns a block table laid out as

    [ reference pages (pinned, shared by sessions with the same references)
    | history window: the last ``history_frames`` latent frames, oldest evicted first (a ring)
    | the current chunk's pages ]

All pages a session will ever need are reserved when it opens (admission control raises
:class:`CapacityError` then, never mid-stream), and they cycle: when a chunk is committed its
pages join the history, and the evicted oldest frames' pages become the next chunk's pages.
Memory and per-chunk work are therefore flat on an unbounded stream.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from .config import KVDtype, StreamConfig
from .errors import CapacityError

__all__ = ["PagePool", "StreamCache", "TORCH_KV_DTYPES", "TORCH_ACT_DTYPES"]

TORCH_ACT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}   # RuntimeConfig.dtype

TORCH_KV_DTYPES = {KVDtype.FP32: torch.float32, KVDtype.BF16: torch.bfloat16,
                   KVDtype.FP16: torch.float16, KVDtype.FP8: torch.float8_e4m3fn,
                   KVDtype.FP8K: torch.float8_e4m3fn}          # (fp8k: K's; V in v_dtype)


@dataclass
class _Shared:
    pages: list
    refcount: int
    k_shift: torch.Tensor | None = None     # [layers, H, D] K smoothing of fp8 pools (filled by the prefill)


class PagePool:
    """Pages of one network (all layers) plus the free list and the shared-reference registry.
    ``kv_dtype`` fp8k: e4m3 K pages with scales beside V pages in ``v_dtype`` (the activations'
    dtype: attention's P.V runs in it on V as stored)."""

    def __init__(self, layers: int, num_pages: int, page_size: int, heads: int, head_dim: int,
                 kv_dtype: KVDtype = KVDtype.FP32, device="cpu", v_dtype: torch.dtype = torch.float32):
        kv_dtype = KVDtype(kv_dtype)
        dt = TORCH_KV_DTYPES[kv_dtype]
        vdt = v_dtype if kv_dtype == KVDtype.FP8K else dt
        if kv_dtype == KVDtype.FP8K and vdt == torch.float8_e4m3fn:
            raise ValueError("fp8k pools keep V in a 16- or 32-bit dtype")
        shape = (layers, num_pages, page_size, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dt, device=device)
        self.v = torch.zeros(shape, dtype=vdt, device=device)
        self.k_scale = torch.ones(layers, num_pages, heads, device=device) if dt == torch.float8_e4m3fn else None
        self.v_scale = torch.ones(layers, num_pages, heads, device=device) if vdt == torch.float8_e4m3fn else None
        self.page_size, self.num_pages, self.layers = page_size, num_pages, layers
        self.heads, self.head_dim = heads, head_dim
        self._free = collections.deque(range(num_pages))
        self._shared: dict = {}

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_scale, self.v_scale)
                   if t is not None)

    def layer(self, i: int):
        """(k_pages, v_pages, k_scale, v_scale) of layer i."""
        ks = None if self.k_scale is None else self.k_scale[i]
        vs = None if self.v_scale is None else self.v_scale[i]
        return self.k[i], self.v[i], ks, vs

    def alloc(self, n: int) -> list:
        if n > len(self._free):
            raise CapacityError(f"need {n} KV pages, {len(self._free)} of {self.num_pages} free")
        return [self._free.popleft() for _ in range(n)]

    def release(self, pages) -> None:
        self._free.extend(pages)

    def acquire_shared(self, key, n: int):
        """Pages pinned under ``key``; returns (pages, fresh). ``fresh`` pages must be filled by
        the caller (if filling fails, call ``release_shared``)."""
        if key in self._shared:
            s = self._shared[key]
            s.refcount += 1
            return s.pages, False
        pages = self.alloc(n)
        shift = None
        if self.k_scale is not None:       # fp8 pages: keys are smoothed by one vector per (layer, head)
            shift = torch.zeros(self.layers, self.heads, self.head_dim, device=self.k.device)
        self._shared[key] = _Shared(pages, 1, shift)
        return pages, True

    def k_shift(self, key) -> torch.Tensor | None:
        """[layers, H, D] K-smoothing vectors of the references pinned under ``key`` (fp8 pools;
        None otherwise): every key a session attends to -- its references' and its own -- is
        stored minus this vector (see :mod:`lpm_rt.ops.cache_write`)."""
        return self._shared[key].k_shift if key in self._shared else None

    def release_shared(self, key) -> None:
        s = self._shared[key]
        s.refcount -= 1
        if s.refcount == 0:
            del self._shared[key]
            self.release(s.pages)

    def shared_count(self) -> int:
        return len(self._shared)


class StreamCache:
    """One session's view of a pool: block table, ring of history frames, current-chunk pages."""

    def __init__(self, pool: PagePool, stream: StreamConfig, history_frames: int | None = None):
        self.pool, self.stream = pool, stream
        self.ppf = stream.pages_per_frame
        self.window = stream.history_frames if history_frames is None else history_frames
        self.max_pages = (stream.reference_slots + self.window + stream.chunk_frames) * self.ppf
        self.ref_key, self.ref_pages = None, []
        # reserve every page this session will cycle through: no allocation mid-stream
        self._spare = collections.deque(pool.alloc((self.window + stream.chunk_frames) * self.ppf))
        self.history = collections.deque()       # per latent frame: list of page ids, oldest first
        self.chunk_pages = [self._spare.popleft() for _ in range(stream.chunk_frames * self.ppf)]
        self.block_table = torch.zeros(1, self.max_pages, dtype=torch.int32)
        self.kv_len = torch.zeros(1, dtype=torch.int32)
        self.closed = False

    # ---- references ---------------------------------------------------------------------------
    def attach_refs(self, key, num_frames: int):
        """Pin ``num_frames`` reference frames' pages under ``key``. Returns (slot_mapping, fresh):
        when fresh, the caller writes the reference K/V through ``slot_mapping``."""
        if num_frames > self.stream.reference_slots:
            raise CapacityError(f"{num_frames} references > {self.stream.reference_slots} slots")
        self.detach_refs()
        pages, fresh = self.pool.acquire_shared(key, num_frames * self.ppf)
        self.ref_key, self.ref_pages = key, pages
        return self._slots(pages, num_frames * self.stream.tokens_per_frame).to(self.pool.k.device), fresh

    @property
    def k_shift(self) -> torch.Tensor | None:
        return None if self.ref_key is None else self.pool.k_shift(self.ref_key)

    def detach_refs(self):
        if self.ref_key is not None:
            self.pool.release_shared(self.ref_key)
            self.ref_key, self.ref_pages = None, []

    def ref_table(self):
        """(block_table, kv_len) covering only the references (for the reference pass)."""
        t = torch.zeros(1, self.max_pages, dtype=torch.int32)
        t[0, :len(self.ref_pages)] = torch.tensor(self.ref_pages, dtype=torch.int32)
        return t, torch.tensor([len(self.ref_pages) * self.pool.page_size], dtype=torch.int32)

    # ---- streaming ----------------------------------------------------------------------------
    def _slots(self, pages, n_tokens):
        ps = self.pool.page_size
        idx = torch.arange(n_tokens)
        return torch.tensor(pages, dtype=torch.int64)[idx // ps] * ps + idx % ps

    def begin_chunk(self):
        """Block table [refs | history | chunk] and the slot mapping of the chunk's tokens.
        Returns (block_table [1, max_pages] int32, kv_len [1] int32, slot_mapping [N] int64)."""
        pages = self.ref_pages + [p for f in self.history for p in f] + self.chunk_pages
        self.block_table.zero_()
        self.block_table[0, :len(pages)] = torch.tensor(pages, dtype=torch.int32)
        self.kv_len[0] = len(pages) * self.pool.page_size
        n = self.stream.chunk_frames * self.stream.tokens_per_frame
        return self.block_table, self.kv_len, self._slots(self.chunk_pages, n)

    def commit_chunk(self):
        """The chunk's K/V (written during its last denoising step) become history; frames older
        than the window return their pages to this session's spare list, which supplies the next
        chunk's pages."""
        for f in range(self.stream.chunk_frames):
            self.history.append(self.chunk_pages[f * self.ppf:(f + 1) * self.ppf])
        while len(self.history) > self.window:
            self._spare.extend(self.history.popleft())
        self.chunk_pages = [self._spare.popleft() for _ in range(self.stream.chunk_frames * self.ppf)]

    def rebase(self, shift: int, rope_dims, theta: float) -> None:
        """Move every history key ``shift`` latent frames back in RoPE time, in place.

        RoPE rotations compose exactly, so scores among video tokens are unchanged while the
        stream's time indices stay bounded. Only this session's history pages are touched
        (reference pages are shared and never move). FP8 pages are dequantized, rotated and
        re-quantized with fresh per-page scales; a frame is re-based at most
        ceil(history / rebase_period) times before it leaves the window."""
        if not self.history:
            return
        from .model.rope import rope_apply, rope_cos_sin
        from .ops.cache_write import cache_write_ref

        shift_all = self.k_shift                                          # smoothed keys: undo, rotate, redo
        ids = torch.tensor([p for f in self.history for p in f], device=self.pool.k.device)
        cos, sin = rope_cos_sin(torch.tensor([[-shift, 0, 0]]), rope_dims, theta)
        ps = self.pool.page_size
        slots = (ids[:, None] * ps + torch.arange(ps, device=ids.device)).flatten()
        for layer in range(self.pool.layers):
            kp, vp, ks, vs = self.pool.layer(layer)
            k = kp.index_select(0, ids).float()                          # (n, page_size, H, D)
            if ks is not None:
                k = k * ks.index_select(0, ids)[:, None, :, None]
            k = k.flatten(0, 1)                                          # (n * page_size, H, D)
            shift = None if shift_all is None else shift_all[layer]
            if shift is not None:
                k = k + shift
            k = rope_apply(k, cos.to(k.device), sin.to(k.device))
            # V is unchanged; cache_write re-quantizes K (and rewrites V with its own bytes)
            v = vp.index_select(0, ids).float()
            if vs is not None:
                v = v * vs.index_select(0, ids)[:, None, :, None]
            cache_write_ref(k, v.flatten(0, 1), kp, vp, slots, ks, vs, k_shift=shift)

    def reset_history(self):
        while self.history:
            self._spare.extend(self.history.popleft())

    def close(self):
        if self.closed:
            return
        self.detach_refs()
        self.reset_history()
        self.pool.release(list(self._spare) + self.chunk_pages)
        self._spare.clear()
        self.chunk_pages = []
        self.closed = True
