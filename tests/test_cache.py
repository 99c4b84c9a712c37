"""Paged history cache: ring eviction, page reuse, shared reference pages, admission control."""

import pytest
import torch

from lpm_rt import CapacityError
from lpm_rt.cache import PagePool, StreamCache
from lpm_rt.config import KVDtype, preset

S = preset("tiny").stream            # 2 pages per latent frame, chunk 2 frames, window 3


def _pool(sessions=2):
    per = (S.reference_slots + S.history_frames + S.chunk_frames) * S.pages_per_frame
    return PagePool(2, sessions * per, S.page_size, 4, 16)


def test_ring_eviction_and_page_reuse():
    pool = _pool(1)
    c = StreamCache(pool, S)
    owned = set(c._spare) | set(c.chunk_pages)
    seen_tables = []
    for step in range(10):
        table, kv_len, slots = c.begin_chunk()
        n_hist = min(step * S.chunk_frames, S.history_frames)
        assert kv_len.item() == (n_hist + S.chunk_frames) * S.tokens_per_frame
        pages = table[0, :kv_len.item() // S.page_size].tolist()
        assert len(set(pages)) == len(pages), "a page appears twice in the table"
        assert set(pages) <= owned, "session used a page it does not own"
        # the chunk's slots land in the chunk's pages, token order preserved
        assert (slots // S.page_size).unique().tolist() == sorted(set(c.chunk_pages))
        assert slots[1] - slots[0] == 1
        seen_tables.append(pages)
        c.commit_chunk()
        assert len(c.history) == min((step + 1) * S.chunk_frames, S.history_frames)
    # steady state: pages cycle, nothing new is allocated from the pool
    assert pool.free_pages == pool.num_pages - len(owned)
    c.close()
    assert pool.free_pages == pool.num_pages


def test_history_holds_the_latest_frames():
    pool = _pool(1)
    c = StreamCache(pool, S)
    frame_pages = []                                  # pages of every latent frame ever written
    for _ in range(5):
        _, _, slots = c.begin_chunk()
        pages = slots.view(S.chunk_frames, -1)[:, ::S.page_size] // S.page_size
        frame_pages += [sorted(set((slots.view(S.chunk_frames, -1)[f] // S.page_size).tolist()))
                        for f in range(S.chunk_frames)]
        c.commit_chunk()
    assert [sorted(f) for f in c.history] == frame_pages[-S.history_frames:]


def test_shared_reference_pages():
    pool = _pool(2)
    a, b = StreamCache(pool, S), StreamCache(pool, S)
    sa, fresh_a = a.attach_refs("char-1", 2)
    sb, fresh_b = b.attach_refs("char-1", 2)
    assert fresh_a and not fresh_b
    assert a.ref_pages == b.ref_pages and torch.equal(sa, sb)
    assert pool.shared_count() == 1
    a.close()
    assert pool.shared_count() == 1, "pages released while another session uses them"
    b.close()
    assert pool.shared_count() == 0 and pool.free_pages == pool.num_pages


def test_admission_control_raises_and_leaks_nothing():
    pool = _pool(1)
    a = StreamCache(pool, S)
    a.attach_refs("x", 3)
    free = pool.free_pages
    with pytest.raises(CapacityError):
        StreamCache(pool, S)
    assert pool.free_pages == free
    with pytest.raises(CapacityError):
        a.attach_refs("y", S.reference_slots + 1)
    a.close()
    assert pool.free_pages == pool.num_pages


def test_fp8k_pool_keeps_v_in_the_activation_dtype():
    """fp8k: e4m3 K pages with per-page scales, V pages in the dtype given (no V scales); what a
    layer hands to the ops, and its bytes (K 1, V 2 per element, plus the K scales)."""
    per = (S.reference_slots + S.history_frames + S.chunk_frames) * S.pages_per_frame
    pool = PagePool(2, per, S.page_size, 4, 16, KVDtype.FP8K, v_dtype=torch.bfloat16)
    kp, vp, ks, vs = pool.layer(1)
    assert kp.dtype == torch.float8_e4m3fn and vp.dtype == torch.bfloat16 and vs is None
    assert tuple(ks.shape) == (per, 4)
    n = 2 * per * S.page_size * 4 * 16
    assert pool.nbytes() == n * 1 + n * 2 + 2 * per * 4 * 4
    fp8 = PagePool(2, per, S.page_size, 4, 16, KVDtype.FP8)
    assert fp8.v.dtype == torch.float8_e4m3fn and fp8.nbytes() == 2 * n + 2 * (2 * per * 4 * 4)
    with pytest.raises(ValueError, match="fp8k"):
        PagePool(2, per, S.page_size, 4, 16, KVDtype.FP8K, v_dtype=torch.float8_e4m3fn)
