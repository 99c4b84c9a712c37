#!/bin/sh
# The lip-sync teacher: continues the shipped demo model's training (scripts/train_demo.sh, runs
# 1-3 below) until its teacher takes the mouth from the speaker audio, then distills it. Not the
# shipped model: the distilled student lost the teacher's lip sync (README, "Quick start").
# Every run checkpoints and resumes: if interrupted, run this script again with the same OUT.
#   sh scripts/train_teacher_sync.sh [OUT]        (default OUT: out/demo_model)
# Needs espeak-ng: the program on PATH or the espeakng-loader wheel (pip install -e ".[speech]");
# half of the speech is espeak-ng, half the world's synthesizer.
#
# Run by run, the sequence behind bench/results/demo_teacher_sync/ (about 4.5 hours on 2 cores).
# 1-3 are scripts/train_demo.sh (the shipped model: its teacher ignored the audio); 4-9 continue.
# Run 4 was stopped early and run 5 started from the checkpoint it had published: --stop-after N
# (steps taken in the call, exit status 3) reproduces where. It counts from where a call starts,
# so if run 4 itself is interrupted, delete $OUT/t1 and run the script again.
set -e
cd "$(dirname "$0")/.."
OUT=${1:-out/demo_model}
PY=${PY:-.venv/bin/python}
T="$PY -m lpm_rt.train"
W="--preset demo --threads 2 --voice mix --ckpt-every 100"
# 1-3. VAE + teacher from scratch, distillation, fp16 export (the first demo model)
$T base $W --out "$OUT/base" --focus 0.3 \
    --vae-steps 1500 --vae-frames 2 --vae-batch 4 --vae-edge 2 --lr-final 0.1 \
    --steps 2000 --batch 4 --pool 1000 --lr 4e-4 --warmup 50 -v
$T distill --teacher "$OUT/base" --out "$OUT/online" --threads 2 --voice mix --focus 0.3 \
    --steps 100 --init-steps 120 --dmd-steps 60 --refiner-steps 100 --long-steps 20 \
    --batch 2 --pool 200 --warmup 20 --lr-final 0.2 --ckpt-every 20 -v
$T export --src "$OUT/online" --out "$OUT/v1" --dtype fp16
# 4. decoder only (encoder frozen: same latents), motion- and edge-weighted; then the teacher from
#    the first model's backbone with motion-weighted flow loss, stopped at teacher step 600
[ "$(cat "$OUT/t1/ckpt/LATEST" 2>/dev/null)" = teacher-0000600 ] || \
$T base $W --init "$OUT/v1" --out "$OUT/t1" --focus 0.5 --vae-freeze-encoder \
    --vae-steps 800 --vae-frames 2 --vae-batch 4 --vae-pool 400 --vae-lr 2e-4 --vae-edge 2 --vae-motion 2 \
    --steps 1500 --batch 4 --pool 1000 --lr 3e-4 --lr-final 0.1 --warmup 50 --motion 8 --stop-after 1400 || \
    [ $? -eq 3 ]
# 5. the audio path at 10x the learning rate
$T base $W --init "$OUT/t1" --out "$OUT/t2" --focus 0.5 --vae-freeze-encoder --vae-steps 0 \
    --steps 400 --batch 4 --pool 400 --lr 3e-4 --warmup 20 --motion 8 --audio-lr-mult 10
# 6. mouth-weighted flow loss
$T base $W --init "$OUT/t2" --out "$OUT/t3" --focus 0.5 --vae-freeze-encoder --vae-steps 0 \
    --steps 300 --batch 4 --pool 400 --lr 3e-4 --warmup 20 --mouth 30 --audio-lr-mult 3
# 7. the lip-sync loss: the teacher learns to take the mouth from the speaker audio
$T base $W --init "$OUT/t3" --out "$OUT/t4" --focus 0.5 --vae-freeze-encoder --vae-steps 0 \
    --steps 1500 --batch 4 --pool 600 --lr 3e-4 --lr-final 0.1 --warmup 20 --mouth 10 --sync 0.5 --audio-lr-mult 3
# 8-9. distillation with the same mouth losses, fp16 export (lip sync 0.074 online: not shipped)
$T distill --teacher "$OUT/t4" --out "$OUT/online2" --threads 2 --voice mix --focus 0.5 \
    --steps 100 --init-steps 120 --dmd-steps 60 --refiner-steps 100 --long-steps 20 \
    --batch 2 --pool 200 --warmup 20 --lr-final 0.2 --ckpt-every 20 --mouth 10 --sync 0.5 -v
$T export --src "$OUT/online2" --out "$OUT/v2" --dtype fp16
