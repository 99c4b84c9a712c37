"""Command line of the trainer: ``main(argv) -> int`` (``lpm-rt train ...`` routes here).

Exit codes: 0 done, 2 bad arguments, 3 stopped before the end (``--stop-after``; resume by running
the same command again).
"""

from __future__ import annotations

import argparse
import logging

import torch

from ..config import PRESETS

__all__ = ["main", "build_parser"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (model, metrics.jsonl, ckpt/); resumes if present")
    p.add_argument("--data", default=None, help="dataset directory written by the world's writer "
                                                "(default: generate clips on the fly)")
    p.add_argument("--source", default=None, metavar="MODULE:FACTORY",
                   help="custom clip source: FACTORY(cfg, frames) returning an object with clip(i)")
    p.add_argument("--voice", choices=("synth", "espeak", "mix"), default="synth",
                   help="world speech: numpy synthesizer, espeak-ng, or half and half (espeak-ng must be installed)")
    p.add_argument("--focus", type=float, default=0.0,
                   help="fraction of world clips showing the shipped demo character (the rest: a new one per clip)")
    p.add_argument("--pool", type=int, default=0,
                   help="reuse encoded clips: index i -> slot i %% POOL, each generated and VAE-encoded once "
                        "(0: every clip fresh)")
    p.add_argument("--batch", type=int, default=2, help="clips per process and step")
    p.add_argument("--frames", type=int, default=0,
                   help="latent frames per clip (0: 2 chunks + the history window, at least the stream's RoPE time limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=20, help="linear LR warm-up steps (per stage)")
    p.add_argument("--ckpt-every", type=int, default=50, help="checkpoint every N steps (and at stage ends)")
    p.add_argument("--lr-final", type=float, default=1.0,
                   help="cosine-decay each stage's learning rate to this fraction at its end (1: constant)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--fsdp", action="store_true", help="shard the DiTs' blocks with FSDP2 over the torchrun processes "
                                                         "(gloo on CPU, NCCL on GPU) for presets that do not fit one device")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N steps taken in this call (exit status 3; the same command resumes)")
    p.add_argument("--rank-digest", action="store_true",
                   help="write DIR/digest-rank<r>.txt (sha256 of the weights) on every rank at the end")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lpm-rt train", description="Train Base LPM, distill it into Online LPM.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="train the VAE and the bidirectional teacher (flow matching + CFG dropout)")
    b.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    b.add_argument("--steps", type=int, required=True, help="teacher steps")
    b.add_argument("--vae-steps", type=int, default=None, help="VAE steps before the teacher (default: --steps)")
    b.add_argument("--lr", type=float, default=3e-4)
    b.add_argument("--vae-lr", type=float, default=2e-3)
    b.add_argument("--init", default=None, metavar="DIR",
                   help="start from the VAE and backbone of a model directory (continue a teacher with a "
                        "new schedule; use --vae-steps 0 to keep its VAE)")
    b.add_argument("--vae-frames", type=int, default=0, help="latent frames per VAE clip (0: as --frames)")
    b.add_argument("--vae-edge", type=float, default=0.0,
                   help="extra reconstruction weight on image edges (eyes, mouth, contours): "
                        "w = 1 + EDGE * |grad| / mean |grad|")
    b.add_argument("--vae-motion", type=float, default=0.0,
                   help="weight what moves within a clip (1 + W * |x - temporal mean| / its mean) in the VAE loss")
    b.add_argument("--motion", type=float, default=0.0,
                   help="the same weight on latent positions in the teacher's flow loss")
    b.add_argument("--vae-mouth", type=float, default=0.0,
                   help="weight the mouth (1 + W * a Gaussian at its centre) in the VAE loss; needs the "
                        "world's clips, which know where the mouth is")
    b.add_argument("--mouth", type=float, default=0.0,
                   help="the same weight on the latent grid in the teacher's flow loss")
    b.add_argument("--vae-temporal", type=float, default=0.0,
                   help="weight of a temporal-consistency term in the VAE loss: L1 between the "
                        "reconstruction's and the clip's frame-to-frame changes (decoder flicker)")
    b.add_argument("--vae-within", type=float, default=0.0,
                   help="weight of a within-latent-frame term in the VAE loss: L1 between the reconstruction's "
                        "and the clip's deviations from each latent frame's mean image (the mouth's motion "
                        "inside a latent frame), with the reconstruction's weights")
    b.add_argument("--vae-latent-noise", type=float, default=0.1,
                   help="Gaussian noise added to the latents before decoding in VAE training, relative to "
                        "their std (default 0.1): robustness to generated latents, at the cost of what the "
                        "latents carry in directions of small variance")
    b.add_argument("--sync", type=float, default=0.0,
                   help="weight of a lip-sync loss: a linear probe's reading of the mouth opening from the "
                        "predicted vs the true latents (lpm_rt.train.mouth; needs the world's clips)")
    b.add_argument("--nod", type=float, default=0.0,
                   help="weight of a head-motion loss: the same kind of probe reading the head's vertical "
                        "position (the listener's nods) from predicted vs true latents (needs the world's clips)")
    b.add_argument("--nod-high", type=float, default=0.0, metavar="F",
                   help="with --nod: draw this fraction of each batch's clips at sigma in [0.9, 1] and count "
                        "the head loss on those alone, where the noisy latents cannot show the head and the "
                        "partner's audio must (default 0: every clip, at the usual levels)")
    b.add_argument("--vae-crop", type=int, default=0,
                   help="train the VAE on random CROPxCROP crops around the frame centre (a whole frame "
                        "every 4th step); 0: whole frames")
    b.add_argument("--vae-pool", type=int, default=0,
                   help="render N clips for the VAE once and reuse them (0: a fresh clip every draw)")
    b.add_argument("--vae-freeze-encoder", action="store_true",
                   help="train only the VAE's decoder: the latent space stays, so DiTs trained on it stay "
                        "valid (with --init: sharpen a model's decoder without retraining its backbone)")
    b.add_argument("--vae-fresh-decoder", action="store_true",
                   help="with --init and --vae-freeze-encoder: keep only the encoder of --init's VAE and train "
                        "a decoder from fresh weights (a new decoder for the same latent space)")
    b.add_argument("--audio-window-pos", action="store_true",
                   help="a learned embedding per audio-window slot (ModelConfig.audio_window_pos), so audio "
                        "attention can tell a frame's own audio from the previous frame's; with --init from a "
                        "model without it, the slots start at zero and everything else loads")
    b.add_argument("--audio-context", type=int, default=None,
                   help="earlier latent frames each frame's audio attention reads (ModelConfig.audio_context; "
                        "default: the preset's, or --init's). A listener's nod lands ~0.5 s after the partner's "
                        "stressed syllable, past a 1-frame window. With --init from a narrower window, its "
                        "slot embeddings are widened (the oldest repeated)")
    b.add_argument("--speaker-audio-context", type=int, default=None, metavar="N",
                   help="earlier latent frames the speaker's audio attention reads, when fewer than "
                        "--audio-context's (ModelConfig.speaker_audio_context; default: --init's, or the same "
                        "window as the listener's): the mouth needs the last ~0.3 s, the nod ~0.8 s")
    b.add_argument("--audio-pretrain", type=int, default=0, metavar="N",
                   help="before the teacher, N steps fitting the audio encoder alone to what each track predicts "
                        "(listener window -> the head's pitch, speaker window -> the mouth's opening) on world "
                        "conversations, audio only (lpm_rt.train.audio; default 0: off)")
    b.add_argument("--audio-clips", type=int, default=150,
                   help="30-s world conversations the audio pre-training draws from (default 150)")
    b.add_argument("--audio-batch", type=int, default=256, help="latent frames per audio pre-training step (default 256)")
    b.add_argument("--audio-lr", type=float, default=1e-3, help="learning rate of the audio pre-training (default 1e-3)")
    b.add_argument("--audio-freeze", action="store_true",
                   help="keep the audio encoder as it is while the teacher trains (after --audio-pretrain, or "
                        "--init from a run that had it): the teacher's flow loss otherwise rewrites what the "
                        "pre-training taught")
    b.add_argument("--audio-lr-mult", type=float, default=1.0,
                   help="learning-rate multiplier of the teacher's audio path (encoder, audio cross-attention)")
    b.add_argument("--vae-batch", type=int, default=0, help="clips per process and VAE step (0: --batch)")
    b.add_argument("--shift", type=float, default=1.0, help="flow-matching noise-level shift")
    b.add_argument("--p-drop-text", type=float, default=0.1)
    b.add_argument("--p-drop-audio", type=float, default=0.1)
    b.add_argument("--p-drop-refs", type=float, default=0.1)
    _common(b)
    d = sub.add_parser("distill", help="four stages: ODE init, self-rollout DMD, refiner, long rollouts")
    d.add_argument("--teacher", required=True, help="model directory written by `train base`")
    d.add_argument("--steps", type=int, required=True, help="steps of every stage (override per stage below)")
    d.add_argument("--init-steps", type=int, default=None, help="stage 1: causal init on teacher ODE trajectories")
    d.add_argument("--dmd-steps", type=int, default=None, help="stage 2: self-rollout distribution matching")
    d.add_argument("--refiner-steps", type=int, default=None, help="stage 3: one-step refiner")
    d.add_argument("--long-steps", type=int, default=None, help="stage 4: long-horizon rollouts")
    d.add_argument("--refiner-dmd", type=float, default=0.0,
                   help="stage 3: weight of a distribution-matching (DMD) loss on the refiner's free-running "
                        "outputs, with the fake score tracking them; counters the regression losses' pull of "
                        "one-step predictions toward the mean (washed-out latents). 0: off")
    d.add_argument("--temporal", type=float, default=0.0,
                   help="stages 2 and 4: weight of a temporal term on the rollout's final outputs: their squared "
                        "frame-to-frame change where the data clip's latents hold still (the background), so "
                        "chunks drawn one at a time agree on what should not move (flicker at chunk "
                        "boundaries). Adds one student pass per step. 0: off")
    d.add_argument("--dmd-weight", type=float, default=1.0,
                   help="stages 2 and 4: weight of the distribution-matching loss. 0 with --temporal: only the "
                        "temporal term (no fake-score updates), for a student that should keep what it has "
                        "beyond its teacher (e.g. lip sync from --sync and audio guidance)")
    d.add_argument("--anchor", type=float, default=0.0,
                   help="stages 2 and 4: weight of holding the student's outputs, where the data clip moves, to "
                        "those of the student the run started from (a frozen copy, same inputs): keeps the "
                        "mouth and head moving as before while --temporal stills the rest. 0: off")
    d.add_argument("--anchor-mouth", action="store_true",
                   help="with --anchor: hold the outputs only around the data clip's mouth (a Gaussian of the "
                        "--mouth loss's radius) rather than wherever the data moves, so distribution matching "
                        "stays free to sharpen the rest of the face")
    d.add_argument("--still-threshold", type=float, default=0.02,
                   help="with --temporal: a latent pixel holds still where the data clip's mean |frame-to-frame "
                        "change| is below this (latents have unit scale; 0.02 marks ~70%% of the demo world's "
                        "frame, its background)")
    d.add_argument("--refiner-sigma", type=float, default=None,
                   help="noise level the refiner re-noises the backbone's output to (the stream setting "
                        "refiner_sigma; default: the teacher's config). Lower keeps more of the backbone's "
                        "output: less washed out, less detail added")
    d.add_argument("--lr", type=float, default=1e-4, help="student / refiner learning rate")
    d.add_argument("--fake-lr", type=float, default=2e-4, help="fake-score model learning rate")
    d.add_argument("--fake-updates", type=int, default=2, help="fake-score updates per generator update")
    d.add_argument("--ode-steps", type=int, default=8, help="Euler steps of the teacher's ODE (stage 1)")
    d.add_argument("--guidance", type=float, default=2.0, help="teacher CFG scale on audio + text")
    d.add_argument("--init-guidance", type=float, default=None,
                   help="stage 1: CFG scale of the teacher's ODE trajectories the student regresses onto "
                        "(default: --guidance). A teacher whose mouth follows the audio only under strong "
                        "guidance hands that response to the student here")
    d.add_argument("--long-factor", type=int, default=3, help="stage 4 rollout length in clips")
    d.add_argument("--mouth", type=float, default=0.0,
                   help="weight the mouth on the latent grid in stage 1 and 3 losses (as `train base --mouth`)")
    d.add_argument("--sync", type=float, default=0.0,
                   help="the lip-sync loss of `train base --sync` in stage 1 and 3 (against the teacher's "
                        "or the data's latents)")
    d.add_argument("--nod", type=float, default=0.0,
                   help="the head-motion loss of `train base --nod` in stage 1 and 3 (against the teacher's "
                        "or the data's latents)")
    d.add_argument("--sync-data", type=float, default=0.0,
                   help="weight of the lip-sync loss against the data clip's mouth (not the teacher's sample) "
                        "in stages 1 and 3, on top of --sync: the clip's audio sets its mouth opening, so "
                        "this asks the student for the data's response where the teacher's is weaker. In units of "
                        "the opening's variance over the data, not the batch's. 0: off")
    d.add_argument("--rollout-sync", type=float, default=0.0,
                   help="stage 2: weight of the lip-sync loss on the rollout's gradient-carrying outputs against "
                        "the data clip's mouth (the rollout is conditioned on the clip's audio, so its mouth "
                        "should open as the clip's does). Distribution matching alone pulls the student's mouth "
                        "back to its teacher's weaker response; this asks for the data's. In units of the "
                        "opening's variance over the data (as --sync-data). A linear probe can be fooled: on the "
                        "demo model (weight 1, with --temporal 3) the loss halved while the bench's lip sync fell "
                        "from 0.56 to 0.32. 0: off")
    d.add_argument("--audio-window-pos", action="store_true",
                   help="give the student (backbone and refiner) a learned embedding per audio-window slot "
                        "(ModelConfig.audio_window_pos), so its audio attention can tell a frame's own audio "
                        "from the previous frame's; starts at zero, also with --from a run without it")
    d.add_argument("--audio-lr-mult", type=float, default=1.0,
                   help="learning-rate multiplier of the student backbone's audio path (as `train base "
                        "--audio-lr-mult`); e.g. for the zero-initialised --audio-window-pos embeddings")
    d.add_argument("--student", default=None, metavar="DIR",
                   help="start the student's backbone and refiner from this online model directory (e.g. "
                        "an export such as lpm_rt/assets/demo) instead of from the teacher; its VAE must encode "
                        "video as the teacher's does (the same latent space; an fp16 export of it passes). "
                        "The fake score still starts as the teacher")
    d.add_argument("--from", dest="from_run", default=None, metavar="DIR",
                   help="start a new run from the newest checkpoint of another distill run (student, refiner, "
                        "fake score and optimizer states), redoing the stages from --restart-at on")
    d.add_argument("--restart-at", default=None, choices=("ode_init", "dmd", "refiner", "long"),
                   help="with --from: the first stage to run again (earlier ones count as done)")
    _common(d)
    e = sub.add_parser("export", help="copy a trained model directory for shipping (fp16 weights)")
    e.add_argument("--src", required=True, help="model directory (e.g. the distill --out)")
    e.add_argument("--out", required=True, help="destination (e.g. lpm_rt/assets/demo)")
    e.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    e.add_argument("--vae-from", default=None, metavar="DIR",
                   help="take the VAE from another model directory (a decoder fine-tuned with "
                        "`train base --vae-freeze-encoder`); refused unless its encoder is SRC's, bit for bit")
    e.add_argument("--blend", default=None, metavar="DIR",
                   help="ship a weight interpolation of SRC and DIR (two fine-tunes of one model, e.g. "
                        "distill runs from the same --student): backbone and refiner are "
                        "(1 - W) * SRC + W * DIR tensor by tensor, W = --blend-weight; DIR must have SRC's "
                        "architecture and VAE encoder (the VAE stays SRC's)")
    e.add_argument("--blend-weight", type=float, default=0.5, metavar="W",
                   help="DIR's share with --blend, in [0, 1] (default 0.5)")
    e.add_argument("--speaker-guidance", type=float, default=None, metavar="G",
                   help="ship with this audio guidance on the speaker track (StreamConfig.speaker_guidance; "
                        "default: SRC's setting)")
    e.add_argument("--listener-guidance", type=float, default=None, metavar="G",
                   help="the same on the listener track")
    return ap


def _same_latent_space(model, other, flag: str, src) -> None:
    """Refuse (ValueError) an ``other`` model whose VAE is not ``model``'s architecture with the
    same encoder, bit for bit: its latents would be another space."""
    mine, theirs = model.vae.state_dict(), other.vae.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise ValueError(f"{flag}: its VAE has a different architecture than {src}'s")
    enc = [k for k in mine if k.startswith("enc")]
    if not enc or any(not torch.equal(mine[k], theirs[k]) for k in enc):
        raise ValueError(f"{flag}: its encoder differs from {src}'s, so it works in another latent space "
                         "(fine-tune decoders with --vae-freeze-encoder)")


def blend_(model, other, weight: float) -> None:
    """In place: ``model``'s backbone and refiner become (1 - weight) * theirs + weight * ``other``'s,
    tensor by tensor in fp32 (a linear interpolation of two fine-tunes of one model). Tensors that
    are not floating point must be equal."""
    for part in ("backbone", "refiner"):
        mine, theirs = getattr(model, part).state_dict(), getattr(other, part).state_dict()
        if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
            raise ValueError(f"--blend: its {part} has a different architecture")
        with torch.no_grad():
            for k, t in mine.items():
                o = theirs[k]
                if t.is_floating_point():
                    t.copy_(torch.lerp(t.float(), o.float(), weight))
                elif not torch.equal(t, o):
                    raise ValueError(f"--blend: {part}.{k} differs and cannot be interpolated")


def export(src, out, dtype: str = "fp16", vae_from=None, stream: dict | None = None, blend=None,
           blend_weight: float = 0.5) -> dict:
    """Write ``src`` (a model directory) to ``out`` with weights cast to ``dtype``; the metadata
    keeps how it was trained. ``vae_from``: a model directory whose VAE replaces ``src``'s -- only
    a decoder trained on the same latent space (identical encoder). ``blend``: a model directory
    whose backbone and refiner are mixed in with share ``blend_weight`` (:func:`blend_`; same
    model config and VAE encoder). ``stream``: StreamConfig settings to ship with (e.g.
    ``speaker_guidance``). Returns the sizes written (bytes per file)."""
    from pathlib import Path

    from ..checkpoint import load_dir, save
    if blend is not None and not 0.0 <= blend_weight <= 1.0:
        raise ValueError(f"--blend-weight must be in [0, 1], got {blend_weight}")
    model, meta = load_dir(src)
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config", "files")}
    keep.update(exported_from=str(src), weights_dtype=dtype)
    if blend is not None:
        other, _ = load_dir(blend)
        if other.cfg.model != model.cfg.model:
            raise ValueError(f"--blend {blend}: its model config differs from {src}'s")
        _same_latent_space(model, other, f"--blend {blend}", src)
        blend_(model, other, blend_weight)
        keep.update(blend={"from": str(blend), "weight": blend_weight})
    if vae_from is not None:
        other, _ = load_dir(vae_from)
        _same_latent_space(model, other, f"--vae-from {vae_from}", src)
        model.vae.load_state_dict(other.vae.state_dict())
        keep.update(vae_from=str(vae_from))
    if stream:
        model.cfg = model.cfg.replace(stream=model.cfg.stream.replace(**stream))
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[dtype]
    d = save(model, out, extra=keep, dtype=dt)
    return {p.name: p.stat().st_size for p in sorted(Path(d).iterdir())}


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "vae_freeze_encoder", False) and not args.init:
        ap.error("--vae-freeze-encoder needs --init DIR (a trained encoder to keep)")
    if getattr(args, "vae_fresh_decoder", False) and not getattr(args, "vae_freeze_encoder", False):
        ap.error("--vae-fresh-decoder needs --vae-freeze-encoder (and --init DIR): a fresh decoder reads the "
                 "kept encoder's latent space")
    if args.cmd == "distill" and args.refiner_sigma is not None and not 0.0 <= args.refiner_sigma < 1.0:
        ap.error("--refiner-sigma must be in [0, 1)")
    if args.cmd == "distill" and args.rollout_sync < 0:
        ap.error("--rollout-sync must be >= 0 (0: off)")
    if args.cmd == "distill" and args.anchor_mouth and args.anchor == 0:
        ap.error("--anchor-mouth needs --anchor W (the weight of holding the mouth)")
    if args.cmd == "distill" and (args.sync_data < 0 or (args.init_guidance is not None and args.init_guidance < 1.0)):
        ap.error("--sync-data must be >= 0 and --init-guidance >= 1 (1: no guidance)")
    if args.cmd == "base" and args.audio_context is not None and args.audio_context < 0:
        ap.error("--audio-context must be >= 0")
    if args.cmd == "base" and args.speaker_audio_context is not None and args.speaker_audio_context < 0:
        ap.error("--speaker-audio-context must be >= 0")
    if args.cmd in ("base", "distill") and (args.sync < 0 or args.nod < 0):
        ap.error("--sync and --nod must be >= 0 (0: off)")
    if args.cmd == "base" and (args.audio_pretrain < 0 or args.audio_clips < 1 or args.audio_batch < 2):
        ap.error("--audio-pretrain must be >= 0, --audio-clips >= 1 and --audio-batch >= 2")
    if args.cmd == "base" and args.audio_pretrain > 0 and args.fsdp:
        ap.error("--audio-pretrain trains the audio encoder alone: run it without --fsdp")
    if args.cmd == "base" and not 0.0 <= args.nod_high <= 1.0:
        ap.error("--nod-high must be in [0, 1]")
    if args.cmd == "base" and args.nod_high > 0 and args.nod == 0:
        ap.error("--nod-high needs --nod (the head loss it moves to high noise)")
    if args.cmd in ("base", "distill") and args.audio_lr_mult <= 0:
        ap.error("--audio-lr-mult must be > 0")
    if args.cmd == "distill" and (args.from_run is None) != (args.restart_at is None):
        ap.error("--from DIR and --restart-at STAGE go together")
    if args.cmd == "distill" and (args.dmd_weight < 0 or args.temporal < 0 or args.anchor < 0 or args.dmd_weight == args.temporal == 0):
        ap.error("--dmd-weight and --temporal are >= 0 and not both 0 (stages 2 and 4 would train nothing)")
    if args.cmd == "distill" and args.from_run is not None and args.student is not None:
        ap.error("--student DIR starts a new run; --from DIR continues another one's weights: give one")
    if args.cmd == "distill" and args.from_run is not None:
        from pathlib import Path
        import json
        src = Path(args.from_run)
        role = json.loads((src / "config.json").read_text()).get("role") if (src / "config.json").is_file() else None
        if role != "online" or not (src / "ckpt" / "LATEST").is_file():
            ap.error(f"--from {src}: not a distill run directory with a checkpoint (config.json role "
                     f"'online', ckpt/LATEST)")
    if args.cmd == "export":
        try:
            gains = {f"{k}_guidance": getattr(args, f"{k}_guidance") for k in ("speaker", "listener")}
            sizes = export(args.src, args.out, args.dtype, args.vae_from,
                           {k: v for k, v in gains.items() if v is not None}, args.blend, args.blend_weight)
        except ValueError as e:
            ap.error(str(e))
        logging.getLogger("lpm_rt.train").warning("wrote %s: %.1f MB", args.out, sum(sizes.values()) / 1e6)
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    for k in ("batch", "ckpt_every"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    if args.pool < 0 or not 0.0 <= args.focus <= 1.0 or not 0.0 < args.lr_final <= 1.0:
        ap.error("--pool must be >= 0, --focus in [0, 1], --lr-final in (0, 1]")
    if args.voice != "synth" and args.data is None and args.source is None:
        from ..world.audio import espeak_available
        if not espeak_available():
            ap.error(f"--voice {args.voice} needs espeak-ng (apt install espeak-ng, or pip install espeakng-loader)")
    from . import dist as D
    d = D.init()
    if args.fsdp:
        D.check_fsdp(d)                                      # refuses early with a clear message
    try:
        if args.cmd == "base":
            if args.vae_steps is None:
                args.vae_steps = args.steps
            from .base import train_base
            return train_base(args, d)
        from ..errors import ArtifactError
        from .distill import train_distill
        try:
            return train_distill(args, d)
        except ArtifactError as e:                   # a teacher or --student that cannot be used
            ap.error(str(e))
    finally:
        D.shutdown(d)
