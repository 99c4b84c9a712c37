"""``train distill``: Base LPM (bidirectional, many steps) -> Online LPM (causal backbone with a
noisy-history cache, ``backbone_steps`` steps, one-step refiner). Four stages, each resumable:

1. ``ode_init``  causal initialisation (CausVid's ODE regression): the teacher solves the ODE from
   noise (CFG on audio + text); the student, chunk-causal with the runtime's noisy history, maps
   each chunk's trajectory state at one of its own step levels to the trajectory's end.
2. ``dmd``       self-rollout distribution matching (Self-Forcing / DMD): the student streams a clip
   from noise exactly as the runtime does (its own generated noisy history); one randomly chosen
   step per chunk keeps gradients. The generated clip is pushed along (fake score - real score):
   the teacher is the real score, a fake-score model (initialised from the teacher) tracks the
   student's distribution by flow matching on its samples. With ``--temporal`` the rollout's final
   outputs (the last step of every chunk, as the runtime shows them) are also held still where the
   data clip's latents hold still (:func:`temporal_loss`): chunks drawn one at a time from fresh noise
   otherwise disagree on what should not move (the background), which shows as flicker at every
   chunk boundary. ``--dmd-weight 0`` keeps the temporal term alone: the student is then held
   still where it should be without being pulled further toward the teacher's distribution; alone
   it learns to change less everywhere (the mouth too), so ``--anchor`` holds its outputs where the
   data moves (``--anchor-mouth``: around the mouth only) to what the student answered when the
   stage began. ``--rollout-sync`` adds the lip-sync loss of the gradient-carrying outputs against
   the data clip's mouth (same audio).
3. ``refiner``   the one-step refiner on the backbone's coarse outputs, re-noised to
   ``refiner_sigma``: teacher-forced coarse outputs regress onto the real latents; free-rollout
   coarse outputs onto the teacher's one-step denoise at that (low) noise level.
4. ``long``      long-horizon rollouts (Self-Forcing++ / LongLive idea): stream ``--long-factor``
   clips' worth of frames (history ring evicting, RoPE indices far past the training length) and
   apply distribution matching to the last window, so what drifts over time is pulled back to the
   teacher's distribution of a short clip with the same references (identity).

The student starts as a copy of the teacher (same block type); the refiner from the teacher's
first ``refiner_layers`` blocks; the VAE is the teacher's, frozen.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

from ..checkpoint import load_dir
from ..errors import ArtifactError
from ..model.dit import LPMDiT
from ..model.online import OnlineLPM
from .base import audio_groups, encode_batch, fit_mouth_probe, teacher_loss, weighted_mse, widen_audio_window
from .mouth import HeadProbe, MouthProbe, latent_mouth_weight, sync_loss
from .data import EncodedPool, batch_indices, clip_frames, collate, make_source
from .dist import Dist, allreduce_grads, broadcast_module, load_full_state_dict, maybe_fsdp
from .flow import (Cond, add_noise, causal_forward, guided_velocity, ode_grid, randn, rollout,
                   teacher_ode, velocity)
from .loop import RunDir, StageSpec, lr_at, run_stages, step_generator

__all__ = ["train_distill", "dmd_loss", "init_refiner", "pick_steps", "still_weight", "temporal_loss"]

log = logging.getLogger("lpm_rt.train")
STAGES = ("ode_init", "dmd", "refiner", "long")


def init_refiner(refiner: LPMDiT, teacher: LPMDiT) -> None:
    """Copy the teacher's weights into the refiner: every shared key (blocks 0..refiner_layers-1)."""
    own = refiner.state_dict()
    src = {k: v for k, v in teacher.state_dict().items() if k in own and v.shape == own[k].shape}
    refiner.load_state_dict({**own, **src})


def start_student(model: OnlineLPM, src, tmodel: OnlineLPM, new_ok=()) -> None:
    """Load the backbone and refiner of the online model directory ``src`` into ``model`` (a
    student about to be distilled from ``tmodel``). Refused unless ``src``'s VAE encodes a clip as
    the teacher's does, up to an fp16 export's rounding: a student on another latent space would
    learn from a teacher it cannot read. Keys of ``new_ok`` that ``src`` lacks keep their values
    (the teacher's, loaded before); a narrower audio window than the teacher's is widened
    (:func:`~lpm_rt.train.base.widen_audio_window`)."""
    smodel, _ = load_dir(src)
    cfg = tmodel.cfg.model
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, cfg.vae_temporal, 4 * cfg.vae_spatial, 4 * cfg.vae_spatial, generator=g) * 2 - 1
    with torch.no_grad():
        want, got = tmodel.vae.encode(clip), smodel.vae.encode(clip)
    # an fp16 export of the teacher's encoder passes (~1e-3); another encoder is off by O(1)
    if want.shape != got.shape or (got - want).norm() > 1e-2 * want.norm():
        raise ArtifactError(f"--student {src}: its VAE encoder is not the teacher's (another latent space)")
    if smodel.cfg.model.audio_context > cfg.audio_context:
        raise ArtifactError(f"--student {src}: its audio window ({smodel.cfg.model.audio_context} frames of context) "
                            f"is wider than the teacher's ({cfg.audio_context})")
    for part in ("backbone", "refiner"):
        sd = widen_audio_window(getattr(smodel, part).state_dict(), cfg.audio_context)
        load_full_state_dict(getattr(model, part), sd, new_ok)


def pick_steps(sigmas, B: int, frames: int, chunk: int, gen: torch.Generator, inputs=None):
    """A random backbone step per chunk -> (sigma per frame [B, F], chosen inputs [B, z, F, h, w]
    if ``inputs`` (per-step tensors) is given)."""
    n = frames // chunk
    k = torch.randint(len(sigmas), (B, n), generator=gen).repeat_interleave(chunk, 1)   # (B, F)
    sig = torch.tensor(sigmas)[k]
    if inputs is None:
        return sig, None
    stack = torch.stack(inputs, 0)                                                  # (K, B, z, F, h, w)
    sig, k = sig.to(stack.device), k.to(stack.device)
    idx = k[None, :, None, :, None, None].expand(1, -1, stack.shape[2], -1, *stack.shape[-2:])
    return sig, stack.gather(0, idx)[0]


def dmd_loss(x_gen, teacher, fake, cond: Cond, gen: torch.Generator, guidance: float, ref_time_index: int,
             lo: float = 0.02, hi: float = 0.98) -> dict:
    """Distribution matching (DMD): at a random noise level, the KL gradient w.r.t. the sample is
    ~ (x0_fake - x0_real) (denoised by the fake and the real score); normalised per clip by
    mean |x_gen - x0_real| and applied through an MSE to a stop-gradient target."""
    B, Fr = x_gen.shape[0], x_gen.shape[2]
    with torch.no_grad():
        sigma = (lo + (hi - lo) * torch.rand(B, generator=gen)).to(x_gen.device)
        xt = add_noise(x_gen.detach(), randn(x_gen.shape, gen, x_gen.device), sigma)
        t = (1000.0 * sigma)[:, None].expand(B, Fr)
        s = sigma.view(-1, 1, 1, 1, 1)
        x0_real = xt - s * guided_velocity(teacher, xt, t, cond, guidance, ref_time_index=ref_time_index)
        x0_fake = xt - s * velocity(fake, xt, t, cond, ref_time_index=ref_time_index)
        w = (x_gen.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-4)
        grad = (x0_fake - x0_real) / w
        target = x_gen.detach() - grad
    loss = 0.5 * F.mse_loss(x_gen, target)
    return {"loss": loss, "dmd_grad": grad.abs().mean()}


def still_weight(x0_real: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, 1, 1, h, w]: 1 at latent pixels where the data clip ``x0_real`` [B, z, F, h, w] holds
    still (mean |frame-to-frame change| over channels and frames below ``threshold``), else 0.
    The generated clip shares the data clip's character, framing and references, not its motion:
    what is still in the data (the background) should be still in the sample."""
    d = (x0_real[:, :, 1:] - x0_real[:, :, :-1]).abs().mean(dim=(1, 2), keepdim=True)
    return (d < threshold).to(x0_real.dtype)


def temporal_loss(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared frame-to-frame change of ``x`` [B, z, F, h, w] over the pixels ``weight``
    [B, 1, 1, h, w] marks (0 when it marks none)."""
    d = (x[:, :, 1:] - x[:, :, :-1]).square()
    n = weight.sum() * x.shape[1] * d.shape[2]
    return (weight * d).sum() / n.clamp_min(1.0)


def train_distill(args, dist: Dist) -> int:
    tmodel, tmeta = load_dir(args.teacher)
    cfg = tmodel.cfg
    if getattr(args, "audio_window_pos", False) and not cfg.model.audio_window_pos:
        # the student gets audio-window slot embeddings its teacher lacks (zero at the start)
        cfg = cfg.replace(model=cfg.model.replace(audio_window_pos=True))
    if cfg.model.audio_window_pos:        # a --from run without them: they start as the teacher's (or 0)
        args.new_params = ("audio_encoder.window",)
    if args.refiner_sigma is not None:            # the student's stream setting, not the teacher's
        cfg = cfg.replace(stream=cfg.stream.replace(refiner_sigma=args.refiner_sigma))
    s, m = cfg.stream, cfg.model
    teacher = tmodel.backbone.eval().requires_grad_(False)
    # default clip: every RoPE time index the stream uses (it re-bases below s.time_limit)
    frames = args.frames or max(2 * s.chunk_frames + s.history_frames, s.time_limit)
    frames = -(-frames // s.chunk_frames) * s.chunk_frames                  # whole chunks
    long_frames = frames * max(args.long_factor, 1)
    world = dict(voice=args.voice, focus=args.focus)
    source = make_source(cfg, clip_frames(cfg, frames), args.data, args.source, **world)
    long_source = make_source(cfg, clip_frames(cfg, long_frames), args.data, args.source, **world)
    torch.manual_seed(args.seed)
    model = OnlineLPM(cfg)
    load_full_state_dict(model.backbone, teacher.state_dict(), getattr(args, "new_params", ()))
    model.vae.load_state_dict(tmodel.vae.state_dict())
    init_refiner(model.refiner, teacher)
    if getattr(args, "student", None):
        start_student(model, args.student, tmodel, getattr(args, "new_params", ()))
    dev = dist.device
    teacher, model = teacher.to(dev), model.to(dev)
    fake = copy.deepcopy(teacher).requires_grad_(True)
    anchor = None                                  # --anchor: the student as it starts, frozen
    if getattr(args, "anchor", 0.0) > 0:
        anchor = copy.deepcopy(model.backbone).eval().requires_grad_(False)
    broadcast_module(model, dist)
    broadcast_module(fake, dist)
    for net in (model.backbone, model.refiner, fake, teacher):   # before the optimizers see them
        maybe_fsdp(net, dist, args.fsdp)
    vae = model.vae.eval().requires_grad_(False)
    run = RunDir(args.out, dist)
    mult = getattr(args, "audio_lr_mult", 1.0)
    student = model.backbone.parameters() if mult == 1.0 else audio_groups(model.backbone, mult)
    optims = {"student": torch.optim.AdamW(student, lr=args.lr, weight_decay=0.0),
              "fake": torch.optim.AdamW(fake.parameters(), lr=args.fake_lr, weight_decay=0.0),
              "refiner": torch.optim.AdamW(model.refiner.parameters(), lr=args.lr, weight_decay=0.0)}
    params = {"student": list(model.backbone.parameters()), "fake": list(fake.parameters()),
              "refiner": list(model.refiner.parameters())}
    grid = ode_grid(args.ode_steps, s.sigma_shift, s.sigmas)
    key = {round(float(x), 6): x for x in grid}
    rti = s.ref_time_index
    init_guidance = args.guidance if getattr(args, "init_guidance", None) is None else args.init_guidance

    pool = EncodedPool(source, cfg, lambda b: encode_batch(vae, b), args.pool, dev)   # stages 1-3

    def conditions(stage, step, src=source, mouth=False):
        """(x0, cond, the batch's mouth annotations: with ``mouth`` only, else None)."""
        idx = batch_indices(args.seed, stage, step, dist.rank, dist.world, args.batch)
        if src is source:
            return pool.batch(idx, mouth=True) if mouth else (*pool.batch(idx), None)
        b = collate([src.clip(i) for i in idx], cfg).to(dev)
        return (*encode_batch(vae, b), b.mouth if mouth else None)

    probes: dict = {}                              # the --sync / --nod probes, fitted once on the pool

    def probe(kind):
        if kind not in probes:
            probes[kind] = fit_mouth_probe(pool, cfg, args.seed, kind=kind)
        return probes[kind]

    def mouth_conditions(stage, step):
        """(x0, cond, latent mouth weight, a sync-loss function) of a pool batch
        (:func:`latent_mouth_weight`, 1.0 without --mouth; the sync loss 0 without --sync,
        --sync-data and --nod: ``sync(pred, want)`` asks for ``want``'s mouth (and head, with
        --nod) and, with --sync-data, x0's). The mouth positions are the data clip's: against the
        teacher's samples (stage 1, the refiner's free-running target) they are approximate, as the
        sampled head pose differs a little."""
        idx = batch_indices(args.seed, stage, step, dist.rank, dist.world, args.batch)
        x0, cond, mouth = pool.batch(idx, mouth=True)
        mw = latent_mouth_weight(m, mouth, args.mouth, (s.height, s.width))
        w_want, w_data, w_nod = args.sync, getattr(args, "sync_data", 0.0), getattr(args, "nod", 0.0)
        if w_want <= 0 and w_data <= 0 and w_nod <= 0:
            return x0, cond, mw, lambda pred, want: 0.0

        def sync(pred, want):
            loss = 0.0
            if w_want > 0:
                loss = loss + w_want * sync_loss(probe(MouthProbe), pred, want, mouth)
            if w_data > 0:
                loss = loss + w_data * sync_loss(probe(MouthProbe), pred, x0, mouth, norm=probe(MouthProbe).var)
            if w_nod > 0:
                loss = loss + w_nod * sync_loss(probe(HeadProbe), pred, want, mouth, norm=probe(HeadProbe).var)
            return loss
        return x0, cond, mw, sync

    def update_fake(x_gen, cond, g, step):
        """``--fake-updates`` flow-matching steps of the fake score on the student's samples."""
        opt = optims["fake"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.fake_lr, args.warmup)
        total = 0.0
        for _ in range(args.fake_updates):
            opt.zero_grad(set_to_none=True)
            loss = teacher_loss(fake, x_gen, cond, g, rti)["loss"]
            loss.backward()
            allreduce_grads(params["fake"], dist)
            opt.step()
            total += float(loss.detach())
        return total / max(args.fake_updates, 1)

    # ---- 1. causal init on the teacher's ODE trajectories ------------------------------------
    def ode_step(step):
        g = step_generator(args.seed, "ode_init", step, dist.rank)
        x0_real, cond, mw, sync = mouth_conditions("ode_init", step)
        traj, x0_t = teacher_ode(teacher, randn(x0_real.shape, g, dev), cond, grid, init_guidance, rti)
        B, Fr = x0_real.shape[0], x0_real.shape[2]
        sig, x_q = pick_steps(s.sigmas, B, Fr, s.chunk_frames, g, [traj[key[round(x, 6)]] for x in s.sigmas])
        x_hist = traj[key[round(s.sigmas[-1], 6)]]
        v = causal_forward(model.backbone, x_hist, x_q, sig, cond, s)
        x0_pred = x_q - sig[:, None, :, None, None] * v
        mse, lip = weighted_mse(x0_pred, x0_t, mw), sync(x0_pred, x0_t)
        loss = mse + lip
        loss.backward()
        return {"loss": float(loss.detach()), "mse": float(mse.detach()), "sync": float(lip.detach()) if torch.is_tensor(lip) else lip}

    # ---- 2. self-rollout distribution matching --------------------------------------------------
    def generate(cond, Fr, g, q_start=0):
        """Student rollout (no grad) + one gradient-carrying step per chunk of frames >= q_start."""
        with torch.no_grad():
            r = rollout(model.backbone, cond, Fr, s, g)
        B = r.x_hist.shape[0]
        sig, x_q = pick_steps(s.sigmas, B, Fr - q_start, s.chunk_frames, g,
                              [x[:, :, q_start:] for x in r.inputs])
        v = causal_forward(model.backbone, r.x_hist, x_q, sig, cond, s, q_start=q_start)
        x_gen = x_q - sig[:, None, :, None, None] * v
        if anchor is None:
            return x_gen, r, None
        with torch.no_grad():                      # the starting student's answer to the same inputs
            x_anchor = x_q - sig[:, None, :, None, None] * causal_forward(anchor, r.x_hist, x_q, sig, cond, s,
                                                                          q_start=q_start)
        return x_gen, r, x_anchor

    w_temporal, w_dmd = getattr(args, "temporal", 0.0), getattr(args, "dmd_weight", 1.0)
    w_rsync, anchor_mouth = getattr(args, "rollout_sync", 0.0), getattr(args, "anchor_mouth", False)

    def still_frames(x0_real, w, r, cond, q_start):
        """The temporal term: the last backbone step of every chunk again, with gradients (the
        rollout's final outputs), its frame-to-frame change where the data holds still (``w``, from
        :func:`still_weight`). Returns (loss, the rollout's still-pixel |change|, the data's)."""
        B, Fq, sl = r.x0.shape[0], r.x0.shape[2] - q_start, s.sigmas[-1]
        x_last = r.inputs[-1][:, :, q_start:]
        v = causal_forward(model.backbone, r.x_hist, x_last, torch.full((B, Fq), sl, device=dev), cond, s,
                           q_start=q_start)
        x_fin = x_last - sl * v
        with torch.no_grad():
            n = (w.sum() * x0_real.shape[1] * (x0_real.shape[2] - 1)).clamp_min(1.0)
            jit = (w * (r.x0[:, :, 1:] - r.x0[:, :, :-1]).abs()).sum() / n
            ref = (w * (x0_real[:, :, 1:] - x0_real[:, :, :-1]).abs()).sum() / n
        return temporal_loss(x_fin, w), float(jit), float(ref)

    def dmd_step(step, stage="dmd", src=source, Fr=frames):
        g = step_generator(args.seed, stage, step, dist.rank)
        q_start = Fr - frames                      # stage 4: the last window of a long rollout
        x0_real, cond, mouth = conditions(stage, step, src, mouth=w_rsync > 0 or anchor_mouth)
        if mouth is not None:                      # the annotations of the frames x_gen covers
            mouth = mouth[:, q_start * m.vae_temporal:]
        x_gen, r, x_anchor = generate(cond, Fr, g, q_start)
        wcond = cond.window(q_start, Fr, m) if q_start else cond
        loss, rec = 0.0, {}
        needs_still = w_temporal > 0 or (x_anchor is not None and not anchor_mouth)
        still = still_weight(x0_real, args.still_threshold) if needs_still else None
        if w_dmd > 0:
            rec["fake_loss"] = update_fake(x_gen.detach(), wcond, g, step)
            out = dmd_loss(x_gen, teacher, fake, wcond, g, args.guidance, rti)
            loss, rec["dmd_grad"] = w_dmd * out["loss"], float(out["dmd_grad"])
        if w_temporal > 0:
            lt, rec["still_change"], rec["still_change_data"] = still_frames(x0_real, still, r, cond, q_start)
            loss = loss + w_temporal * lt
            rec["temporal"] = float(lt.detach())
        if w_rsync > 0 and stage == "dmd":         # the generated mouth against the data clip's (same audio)
            mp = probe(MouthProbe)
            lm = sync_loss(mp, x_gen, x0_real, mouth, norm=mp.var)
            loss = loss + w_rsync * lm
            rec["rollout_sync"] = float(lm.detach())
        if x_anchor is not None:                   # where the data moves: stay the starting student
            if anchor_mouth:                       # a Gaussian around the clip's mouth, 1 at its centre
                held = latent_mouth_weight(m, mouth, 1.0, (s.height, s.width)) - 1.0
            else:
                held = 1.0 - still
            la = (held * (x_gen - x_anchor).square()).mean() / held.mean().clamp_min(1e-6)
            loss = loss + args.anchor * la
            rec["anchor"] = float(la.detach())
        loss.backward()
        rec = {"loss": float(loss.detach()), **rec}
        if q_start:                                # identity drift: late vs early frame statistics
            early, late = r.x0[:, :, :frames], r.x0[:, :, q_start:]
            rec["drift"] = float((late.mean(dim=(2, 3, 4)) - early.mean(dim=(2, 3, 4))).abs().mean())
        return rec

    # ---- 3. the one-step refiner ---------------------------------------------------------------
    def refiner_step(step):
        g = step_generator(args.seed, "refiner", step, dist.rank)
        x0_real, cond, mw, sync = mouth_conditions("refiner", step)
        B, Fr = x0_real.shape[0], x0_real.shape[2]
        sl, sr = s.sigmas[-1], s.refiner_sigma
        with torch.no_grad():
            x_h = add_noise(x0_real, randn(x0_real.shape, g, dev), torch.full((B,), sl, device=dev))
            coarse_tf = x_h - sl * causal_forward(model.backbone, x_h, x_h, torch.full((B, Fr), sl, device=dev),
                                                  cond, s)
            coarse_free = rollout(model.backbone, cond, Fr, s, g).x0
            xr_tf, xr_free = (add_noise(c, randn(c.shape, g, dev), torch.full((B,), sr, device=dev))
                              for c in (coarse_tf, coarse_free))
            t = torch.full((B, Fr), 1000.0 * sr, device=dev)
            target_free = xr_free - sr * guided_velocity(teacher, xr_free, t, cond, args.guidance, ref_time_index=rti)
        kw = dict(chunk_frames=s.chunk_frames, window=0, ref_time_index=rti)   # refs + the chunk only
        pred_tf = xr_tf - sr * velocity(model.refiner, xr_tf, t, cond, **kw)
        pred_free = xr_free - sr * velocity(model.refiner, xr_free, t, cond, **kw)
        l_tf = weighted_mse(pred_tf, x0_real, mw) + sync(pred_tf, x0_real)
        l_free = weighted_mse(pred_free, target_free, mw) + sync(pred_free, target_free)
        loss, extra = l_tf + l_free, {}
        if args.refiner_dmd > 0:                   # distribution matching on the free-running outputs
            extra["fake_loss"] = update_fake(pred_free.detach(), cond, g, step)
            d = dmd_loss(pred_free, teacher, fake, cond, g, args.guidance, rti)
            loss = loss + args.refiner_dmd * d["loss"]
            extra["refined_dmd"] = float(d["loss"].detach())
        loss.backward()
        with torch.no_grad():
            coarse_err = F.mse_loss(coarse_tf, x0_real)
        return {"loss": float(loss.detach()), "refined_tf": float(l_tf.detach()),
                "coarse_tf": float(coarse_err), "refined_free": float(l_free.detach()), **extra}

    def long_step(step):
        return dmd_step(step, "long", long_source, long_frames)

    def train_only(*nets):
        def setup(start):
            for net in (model, fake):
                net.requires_grad_(False)
            for net in nets:
                net.requires_grad_(True)
        return setup

    n = {k: v if v is not None else args.steps for k, v in zip(
        STAGES, (args.init_steps, args.dmd_steps, args.refiner_steps, args.long_steps))}
    stages = [StageSpec("ode_init", n["ode_init"], args.lr, ode_step, ("student",), train_only(model.backbone)),
              StageSpec("dmd", n["dmd"], args.lr, dmd_step, ("student",), train_only(model.backbone, fake)),
              StageSpec("refiner", n["refiner"], args.lr, refiner_step, ("refiner",),
                        train_only(model.refiner, *((fake,) if args.refiner_dmd > 0 else ()))),
              StageSpec("long", n["long"], args.lr, long_step, ("student",), train_only(model.backbone, fake))]
    meta = {"role": "online", "teacher": str(args.teacher), "teacher_config": tmeta.get("config")}
    return run_stages(run, args, stages, model, {"fake": fake}, optims, params, meta)
