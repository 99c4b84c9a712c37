"""Unbounded streams: memory and per-chunk time stay flat over 2,000 chunks of the tiny preset."""

import time

import numpy as np
import torch

import lpm_rt


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_and_chunk_time_flat_over_2000_chunks():
    avatar = lpm_rt.load("tiny")
    fpc = avatar.cfg.stream.frames_per_chunk
    pool = avatar.model.pools[0]
    rng = np.random.default_rng(0)
    piece = (0.1 * rng.standard_normal(fpc * 1000)).astype(np.float32)   # one chunk of audio
    times, rss = [], []
    with avatar.open_session() as s:
        free = pool.free_pages
        for i in range(2000):
            t0 = time.process_time()          # CPU time: other processes' load does not count
            s.push_audio(piece, 24000)
            n = sum(1 for _ in s.frames())
            times.append(time.process_time() - t0)
            assert n == fpc
            if i in (200, 1999):
                rss.append(rss_bytes())
            assert pool.free_pages == free                     # no page allocated mid-stream
        assert len(s._state.bb_cache.history) == avatar.cfg.stream.history_frames
    # the floor (10th percentile) of the per-chunk cost: growth with stream length would raise it,
    # bursts of contention from other processes mostly do not
    early, late = np.percentile(times[100:400], 10), np.percentile(times[-300:], 10)
    growth = (rss[1] - rss[0]) / rss[0]
    print(f"chunk p10 early {early * 1e3:.2f} ms late {late * 1e3:.2f} ms ratio {late / early:.3f}; "
          f"RSS {rss[0] / 2**20:.1f} -> {rss[1] / 2**20:.1f} MiB ({growth * 100:+.2f}%)")
    assert late / early < 1.5, "per-chunk time grows with stream length"
    assert growth < 0.05, "memory grows with stream length"
