"""Data parallelism for the trainers: torchrun's environment -> a process group (gloo on CPU,
NCCL on GPU), explicit gradient averaging, parameter broadcast, and an optional FSDP wrap.

Gradients are all-reduced by hand after ``backward`` rather than through DDP, because the
trainers call several networks through their pass methods (``video_pass``, ``ref_pass``), not
one ``forward``; the arithmetic is DDP's (sum, divide by world size), bucketed per tensor.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as td

__all__ = ["Dist", "init", "broadcast_module", "allreduce_grads", "allreduce_mean", "shutdown",
           "check_fsdp", "maybe_fsdp"]

log = logging.getLogger("lpm_rt.train")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init() -> Dist:
    """From torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device="cuda" if torch.cuda.is_available() else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    log.info("rank %d/%d on %s", rank, world, "cuda" if cuda else "cpu (gloo)")
    return Dist(rank, world, f"cuda:{local}" if cuda else "cpu")


def shutdown(d: Dist) -> None:
    if d.enabled and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not d.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        td.broadcast(t.data, src=0)


@torch.no_grad()
def allreduce_grads(params, d: Dist) -> None:
    """Average gradients over ranks (a missing grad counts as zero, so ranks stay in step)."""
    if not d.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        td.all_reduce(p.grad, op=td.ReduceOp.SUM)
        p.grad.div_(d.world)


def allreduce_mean(values: dict, d: Dist) -> dict:
    """Average logged scalars over ranks."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return {k: v / d.world for k, v in zip(keys, t.tolist())}


def check_fsdp(d: Dist) -> None:
    """The guard of ``--fsdp``. Sharding itself is :func:`maybe_fsdp`; the trainers' checkpoint and
    gradient paths still assume whole (unsharded) tensors, so the option refuses until they
    gather sharded state (``torch.distributed.checkpoint``) -- never a silent unsharded run."""
    if not (d.enabled and torch.cuda.is_available()):
        raise RuntimeError("--fsdp needs CUDA and torchrun with >= 2 processes; on CPU use plain data "
                           "parallelism (the default)")
    raise RuntimeError("--fsdp: sharded checkpoints are not wired into the trainer yet; use plain data "
                       "parallelism (the default) for presets that fit one device")


def maybe_fsdp(net: torch.nn.Module, d: Dist, enabled: bool) -> torch.nn.Module:
    """Shard ``net`` per block with FSDP2 (``fully_shard``) for presets too large for one device.

    Guarded: needs CUDA and a process group; on CPU it refuses with a clear message. Each block
    is sharded on its own (blocks are called through ``forward``); the root holds embeddings and
    head, which are unsharded explicitly around the pass methods the trainers call."""
    if not enabled:
        return net
    if not (d.enabled and torch.cuda.is_available()):
        raise RuntimeError("FSDP needs CUDA and a process group")
    from torch.distributed.fsdp import fully_shard
    for blk in net.blocks:
        fully_shard(blk)
    fully_shard(net, reshard_after_forward=False)
    net.unshard()          # root parameters (embeddings, head) stay gathered for the pass methods
    return net
