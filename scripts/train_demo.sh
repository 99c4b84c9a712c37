#!/bin/sh
# Trains the shipped demo model (lpm_rt/assets/demo) from scratch on the synthetic world, on CPU.
# Every stage checkpoints and resumes: if interrupted, run this script again with the same OUT.
#   sh scripts/train_demo.sh [OUT]        (default OUT: out/demo_model)
# Needs espeak-ng: the program on PATH or the espeakng-loader wheel (pip install -e ".[speech]");
# half of the speech is espeak-ng, half the world's synthesizer.
set -e
cd "$(dirname "$0")/.."
OUT=${1:-out/demo_model}
PY=${PY:-.venv/bin/python}
$PY -m lpm_rt.train base --preset demo --out "$OUT/base" --threads 2 --voice mix --focus 0.3 \
    --vae-steps 1500 --vae-frames 2 --vae-batch 4 --vae-edge 2 --lr-final 0.1 \
    --steps 2000 --batch 4 --pool 1000 --lr 4e-4 --warmup 50 --ckpt-every 100 -v
$PY -m lpm_rt.train distill --teacher "$OUT/base" --out "$OUT/online" --threads 2 --voice mix --focus 0.3 \
    --steps 100 --init-steps 120 --dmd-steps 60 --refiner-steps 100 --long-steps 20 \
    --batch 2 --pool 200 --warmup 20 --lr-final 0.2 --ckpt-every 20 -v
$PY -m lpm_rt.train export --src "$OUT/online" --out lpm_rt/assets/demo --dtype fp16
