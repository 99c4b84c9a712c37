"""Run directory, checkpoints and the step loop shared by ``train base`` and ``train distill``.

Layout of ``--out DIR``:

    DIR/config.json, DIR/{backbone,refiner,vae}.safetensors   the latest model (lpm_rt.load(DIR))
    DIR/metrics.jsonl                                         one JSON object per logged step
    DIR/ckpt/LATEST                                           name of the newest complete checkpoint
    DIR/ckpt/<stage>-<step>/                                  model + aux_<net>.safetensors +
                                                              optim_<net>.safetensors/.json + state.json

A checkpoint directory is written completely before ``LATEST`` is atomically switched to it, so
a run killed at any moment resumes from a consistent state. Optimizer state is stored as
safetensors (tensors) + JSON (hyper-parameters); nothing is pickled. Every random draw of a step
comes from a generator seeded by (seed, stage, step, rank), so a resumed run repeats exactly the
steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import hashlib
import json
import math
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import checkpoint
from .dist import (Dist, _is_sharded, allreduce_grads, allreduce_mean, full_state_dict, load_full_state_dict,
                   shard_like)

__all__ = ["RunDir", "optim_to_tensors", "optim_from_tensors", "step_generator", "lr_at", "run_stage",
           "StageSpec", "run_stages"]

log = logging.getLogger("lpm_rt.train")


def step_generator(seed: int, stage: str, step: int, rank: int) -> torch.Generator:
    salt = sum(ord(ch) * 131 ** i for i, ch in enumerate(stage)) % 1_000_003
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) * 100_003 + step * 131 + rank)


def lr_at(step: int, base: float, warmup: int, total: int = 0, final: float = 1.0) -> float:
    """Linear warm-up, then constant -- or, with ``final`` < 1, a cosine from ``base`` down to
    ``final * base`` at step ``total`` (the end of the stage)."""
    lr = base * min(1.0, (step + 1) / max(warmup, 1))
    if final < 1.0 and total > warmup and step >= warmup:
        p = min((step - warmup) / max(total - warmup - 1, 1), 1.0)
        lr *= final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr


# ---- optimizer state without pickle -------------------------------------------------------------

def optim_to_tensors(opt: torch.optim.Optimizer) -> tuple:
    """-> (tensors for safetensors, JSON-able meta). State of FSDP-sharded parameters is gathered
    whole (a collective then: every rank calls it)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sorted(sd["state"].items()):
        for k, v in sorted(st.items()):
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = (v.full_tensor() if _is_sharded(v) else v).detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optim_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Inverse of :func:`optim_to_tensors`; whole tensors of sharded parameters are cut to this
    rank's shard."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict = {}
    for key, v in sorted(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, k = key.split(".", 1)
        p = params[int(idx)]
        if isinstance(v, torch.Tensor) and _is_sharded(p) and v.shape == p.shape:
            v = _as_dtensor(shard_like(v, p), p)
        state.setdefault(int(idx), {})[k] = v
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _as_dtensor(local: torch.Tensor, like):
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


# ---- the run directory --------------------------------------------------------------------------

class RunDir:
    def __init__(self, out, dist: Dist):
        self.out, self.dist = Path(out), dist
        self.ckpt = self.out / "ckpt"
        self.metrics = self.out / "metrics.jsonl"
        if dist.main:
            self.ckpt.mkdir(parents=True, exist_ok=True)

    # -- metrics
    def log(self, rec: dict) -> None:
        if self.dist.main:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")

    def truncate_metrics(self, keep) -> None:
        """On resume: drop records written after the checkpoint (``keep(rec)`` says which stay)."""
        if not self.dist.main or not self.metrics.is_file():
            return
        recs = [json.loads(x) for x in self.metrics.read_text().splitlines() if x.strip()]
        self.metrics.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs if keep(r)))

    # -- checkpoints
    def latest(self) -> Path | None:
        p = self.ckpt / "LATEST"
        if not p.is_file():
            return None
        d = self.ckpt / p.read_text().strip()
        return d if (d / "state.json").is_file() else None

    def read_state(self) -> dict | None:
        d = self.latest()
        return None if d is None else json.loads((d / "state.json").read_text())

    def save(self, model, aux: dict, optims: dict, state: dict, meta: dict, keep: int = 2) -> None:
        """Every rank gathers sharded (FSDP) state, rank 0 writes, every rank waits for it (so
        nobody reads a half-written checkpoint)."""
        parts = {part: full_state_dict(getattr(model, part)) for part in checkpoint.PARTS}
        aux_sd = {k: full_state_dict(net) for k, net in aux.items()}
        opt_sd = {k: optim_to_tensors(opt) for k, opt in optims.items()}
        if self.dist.main:
            name = f"{state['stage']}-{state['step']:07d}"
            d = self.ckpt / name
            tmp = self.ckpt / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            checkpoint.save(model, tmp, extra=meta, state_dicts=parts)
            for k, sd in aux_sd.items():
                save_file({n: t.contiguous() for n, t in sd.items()}, str(tmp / f"aux_{k}.safetensors"))
            for k, (tensors, ometa) in opt_sd.items():
                save_file(tensors, str(tmp / f"optim_{k}.safetensors"))
                (tmp / f"optim_{k}.json").write_text(json.dumps(ometa))
            (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
            shutil.rmtree(d, ignore_errors=True)
            os.replace(tmp, d)
            (self.ckpt / "LATEST.tmp").write_text(name)
            os.replace(self.ckpt / "LATEST.tmp", self.ckpt / "LATEST")
            self._publish(d)
            done = sorted(p for p in self.ckpt.iterdir() if p.is_dir() and not p.name.startswith("."))
            for old in sorted(done, key=lambda p: p.stat().st_mtime)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        if self.dist.enabled:
            torch.distributed.barrier()

    def _publish(self, d: Path) -> None:
        """Copy the checkpoint's model files to DIR/ (config.json last) for lpm_rt.load(DIR)."""
        for f in sorted(d.glob("*.safetensors")):
            if f.name.split(".")[0] in checkpoint.PARTS:
                shutil.copyfile(f, self.out / f".{f.name}.tmp")
                os.replace(self.out / f".{f.name}.tmp", self.out / f.name)
        shutil.copyfile(d / "config.json", self.out / ".config.json.tmp")
        os.replace(self.out / ".config.json.tmp", self.out / "config.json")

    def load(self, model, aux: dict, optims: dict, new_ok=()) -> dict:
        """Restore model parts, aux nets and optimizers from the newest checkpoint -> its state.
        ``new_ok``: names of parameters ``model`` may have and the checkpoint lack (a part the new
        run adds, e.g. ``audio_encoder.window``); they keep the values they have, and the
        optimizers then start afresh (their saved states index the checkpoint's parameters)."""
        d = self.latest()
        loaded, _ = checkpoint.load_dir(d)
        added = []
        for part in checkpoint.PARTS:
            new = load_full_state_dict(getattr(model, part), getattr(loaded, part).state_dict(), new_ok)
            added += [f"{part}.{k}" for k in new]
        for k, net in aux.items():
            new = load_full_state_dict(net, load_file(str(d / f"aux_{k}.safetensors")), new_ok)
            added += [f"{k}.{n}" for n in new]
        if added:
            log.info("%s: new parameters %s keep the values they had before it; optimizers start afresh",
                     d, ", ".join(added))
        else:
            for k, opt in optims.items():
                optim_from_tensors(opt, load_file(str(d / f"optim_{k}.safetensors")),
                                   json.loads((d / f"optim_{k}.json").read_text()))
        return json.loads((d / "state.json").read_text())


# ---- the step loop ------------------------------------------------------------------------------

def run_stage(run: RunDir, stage: str, steps: int, start: int, step_fn, optims: dict, params: dict,
              save_fn, *, lr: float, warmup: int, ckpt_every: int, log_every: int = 1,
              stop_after: int | None = None, lr_final: float = 1.0) -> int:
    """Run ``stage`` from ``start`` to ``steps``. ``step_fn(step) -> {name: float}`` computes losses
    and calls ``backward``; here gradients are averaged over ranks, optimizers step, metrics are
    logged and checkpoints saved. ``params[name]`` are the parameters of ``optims[name]``.
    Stops early once ``stop_after`` steps were taken in this call (a simulated kill: nothing after
    the last checkpoint is saved). Returns the number of steps taken."""
    d = run.dist
    bar = tqdm(total=steps, initial=start, desc=stage, disable=not d.main, dynamic_ncols=True, leave=False)
    t_start = time.perf_counter()
    taken = 0
    for step in range(start, steps):
        t0 = time.perf_counter()
        cur_lr = lr_at(step, lr, warmup, steps, lr_final)
        for opt in optims.values():
            for g in opt.param_groups:                   # a group may scale the schedule (lr_mult)
                g["lr"] = cur_lr * g.get("lr_mult", 1.0)
            opt.zero_grad(set_to_none=True)
        rec = step_fn(step)
        for name, opt in optims.items():
            if rec.pop(f"_skip_{name}", False):
                continue
            allreduce_grads(params[name], d)
            opt.step()
        rec = allreduce_mean(rec, d)
        taken += 1
        if step % log_every == 0 or step + 1 == steps:
            out = {"stage": stage, "step": step, "lr": cur_lr, "seconds": time.perf_counter() - t0,
                   "elapsed": time.perf_counter() - t_start, "world": d.world}
            out.update({k: float(v) for k, v in rec.items()})
            run.log(out)
            bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}")
        bar.update(1)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save_fn(step + 1)
        if stop_after is not None and taken >= stop_after:
            break
    bar.close()
    return taken


@dataclass
class StageSpec:
    name: str
    steps: int
    lr: float
    step_fn: Callable           # step -> {metric: float}; calls backward
    optims: tuple               # names of the optimizers run_stage steps after step_fn
    setup: Callable | None = None   # setup(start_step) before the stage runs (freeze / unfreeze...)


def run_stages(run: RunDir, args, stages: list, model, aux: dict, optims: dict, params: dict,
               meta: dict) -> int:
    """Run ``stages`` in order, resuming from the run directory's newest checkpoint (finished
    stages are skipped, the interrupted one continues at its step). Checkpoints hold the model,
    ``aux`` networks and all ``optims``. Returns 0 when every stage is done, 3 when stopped by
    ``args.stop_after`` (run the same command again to resume). A new run with ``args.from_run``
    set starts from that run directory's newest checkpoint (model, ``aux``, ``optims``) with the
    stages before ``args.restart_at`` counted as done."""
    state = run.read_state()
    src = getattr(args, "from_run", None)
    if state is not None:
        run.load(model, aux, optims)
        run.truncate_metrics(lambda r: r.get("stage") in state["done"] or
                             (r.get("stage") == state["stage"] and r["step"] < state["step"]))
        log.info("resuming %s at %s step %d", run.out, state["stage"], state["step"])
    elif src is not None:
        names = [sp.name for sp in stages]
        first = names.index(args.restart_at)
        origin = RunDir(src, run.dist)
        if origin.latest() is None:
            raise FileNotFoundError(f"{src}: no complete checkpoint to start from")
        was = origin.load(model, aux, optims, new_ok=getattr(args, "new_params", ()))
        state = {"stage": names[first], "step": 0, "done": names[:first]}
        log.info("starting %s from %s (%s step %d), at %s", run.out, src, was["stage"], was["step"], names[first])
    else:
        state = {"stage": stages[0].name, "step": 0, "done": []}
    budget = args.stop_after
    for sp in stages:
        if sp.name in state["done"]:
            continue
        if budget is not None and budget <= 0:
            return 3
        start = state["step"] if state["stage"] == sp.name else 0
        if sp.setup is not None:
            sp.setup(start)

        def save(step, sp=sp):
            done = list(state["done"]) + ([sp.name] if step >= sp.steps else [])
            st = {"stage": sp.name, "step": step, "done": done}
            run.save(model, aux, optims, st, {**meta, "trained": True, "stage": sp.name, "step": step,
                                              "args": {k: v for k, v in vars(args).items()}})
            state.update(st)

        if sp.steps == 0:
            save(0)
            continue
        taken = run_stage(run, sp.name, sp.steps, start, sp.step_fn, {k: optims[k] for k in sp.optims},
                          params, save, lr=sp.lr, warmup=args.warmup, ckpt_every=args.ckpt_every,
                          stop_after=budget, lr_final=getattr(args, "lr_final", 1.0))
        if budget is not None:
            budget -= taken
    if getattr(args, "rank_digest", False):
        write_digest(run, [model, *aux.values()])
    return 0 if all(sp.name in state["done"] for sp in stages) else 3


def write_digest(run: RunDir, nets) -> Path:
    """DIR/digest-rank<r>.txt: sha256 of every parameter of ``nets`` on this rank (checks that data
    parallel ranks hold identical weights)."""
    h = hashlib.sha256()
    for net in nets:
        for k, v in sorted(full_state_dict(net).items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    p = run.out / f"digest-rank{run.dist.rank}.txt"
    p.write_text(h.hexdigest() + "\n")
    return p
