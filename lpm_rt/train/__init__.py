"""The reference trainer: Base LPM on the synthetic world, then its distillation into Online LPM.

    python -m lpm_rt.train base    --preset tiny --steps 200 --out runs/base
    python -m lpm_rt.train distill --teacher runs/base --steps 100 --out runs/online
    torchrun --standalone --nproc-per-node 2 -m lpm_rt.train base ...      (data parallel)

Modules: :mod:`.data` (world clips -> tensors), :mod:`.flow` (flow matching, the runtime's
chunk-causal form, rollouts), :mod:`.base`, :mod:`.distill` (the four stages), :mod:`.loop`
(run directory, checkpoints, resume), :mod:`.dist` (data parallel), :mod:`.cli` (``main``).
"""

from .cli import main

__all__ = ["main"]
