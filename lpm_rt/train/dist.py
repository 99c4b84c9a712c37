"""Data parallelism for the trainers: torchrun's environment -> a process group (gloo on CPU,
NCCL on GPU), explicit gradient averaging, parameter broadcast, and FSDP2 block sharding
(``--fsdp``) with whole-tensor checkpoints.

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
           "check_fsdp", "maybe_fsdp", "full_state_dict", "load_full_state_dict", "shard_like"]

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
        if _is_sharded(p):                   # FSDP already reduce-scattered (averaged) this one
            continue
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
    """The guard of ``--fsdp``: sharding needs torchrun with >= 2 processes (gloo on CPU, NCCL on GPU)."""
    if not d.enabled:
        raise RuntimeError("--fsdp shards over processes: run it under torchrun with --nproc-per-node >= 2")


def maybe_fsdp(net: torch.nn.Module, d: Dist, enabled: bool) -> torch.nn.Module:
    """Shard ``net``'s blocks with FSDP2 (``fully_shard``, one unit per block) over all ranks.

    Only the blocks are sharded: they hold almost every parameter (39 of 40 layers' worth at
    lpm-17b) and are always called through ``forward``, so FSDP's hooks gather each block's
    weights just before it runs and free them after, in the forward and backward passes alike.
    Embeddings, head and audio encoder stay whole on every rank (their gradients are averaged
    by :func:`allreduce_grads`; the blocks' are reduce-scattered by FSDP). Call after
    :func:`broadcast_module`: every rank shards the same weights."""
    if not enabled:
        return net
    check_fsdp(d)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cuda" if str(d.device).startswith("cuda") else "cpu", (d.world,))
    for blk in net.blocks:
        fully_shard(blk, mesh=mesh)
    return net


def _is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def full_state_dict(module: torch.nn.Module) -> dict:
    """``state_dict`` with every FSDP-sharded entry gathered into a whole CPU tensor. A collective
    when anything is sharded: every rank calls it, for the same modules in the same order."""
    return {k: (v.full_tensor() if _is_sharded(v) else v).detach().cpu() for k, v in module.state_dict().items()}


@torch.no_grad()
def load_full_state_dict(module: torch.nn.Module, sd: dict, new_ok=()) -> list:
    """Load whole tensors (e.g. from safetensors) into ``module``, sharded entries included (each
    rank keeps its shard). Strict: every key must be present, except those ending in one of
    ``new_ok`` (parameters a run adds to a model that lacks them, e.g. ``audio_encoder.window``):
    they keep their values. Returns those keys."""
    own = module.state_dict()
    new = [k for k in own if k not in sd and k.endswith(tuple(new_ok))] if new_ok else []
    missing = sorted(set(own) - set(sd) - set(new))
    if missing:
        raise KeyError(f"state dict lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for k, v in own.items():
        if k in new:
            continue
        v_local = v.to_local() if _is_sharded(v) else v
        v_local.copy_(shard_like(sd[k].to(v.dtype), v))
    return new


def shard_like(full: torch.Tensor, ref) -> torch.Tensor:
    """This rank's piece of ``full`` as ``ref`` (a DTensor, or a plain tensor: returned whole) holds it."""
    if not _is_sharded(ref):
        return full.to(ref.device)
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(ref.to_local().device), ref.device_mesh, ref.placements).to_local()
