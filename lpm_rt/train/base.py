"""``train base``: the VAE, then Base LPM (the bidirectional teacher) with flow matching.

Stage ``vae``      reconstruction of world clips (and of references as still clips) through
                   ``VAE.encode`` / ``VAE.decode``, with a latent-scale penalty that keeps every
                   channel near zero mean and unit variance (the DiT's flow matching assumes
                   unit-scale data) and small latent noise so the decoder tolerates generated
                   latents. At its end the measured per-channel std is folded into the VAE's
                   weights (:func:`normalize_latents`), so latents are unit-scale exactly.
Stage ``teacher``  flow matching on VAE latents (VAE frozen): v = noise - x0 at a logit-normal
                   noise level, one level per clip (Wan). Condition dropout for classifier-free
                   guidance: per clip the text (-> null tag) and the audio (-> silence, each track
                   or both), per batch the references.

The teacher is saved as the ``backbone`` of the model directory (the refiner keeps its initial
weights), so ``lpm_rt.load(DIR)`` loads it and ``train distill --teacher DIR`` reads it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..config import preset
from ..model.online import OnlineLPM
from .audio import AudioLabelPool, audio_pretrain_loss, audio_readers
from .data import Batch, EncodedPool, batch_indices, clip_frames, collate, make_source
from .dist import Dist, broadcast_module, load_full_state_dict, maybe_fsdp
from .flow import SILENCE_MEL, Cond, add_noise, randn, sample_sigma, velocity
from .loop import RunDir, StageSpec, run_stages, step_generator
from .mouth import HeadProbe, MouthProbe, latent_mouth_weight, mouth_weight, require_mouth, sync_loss

__all__ = ["train_base", "vae_loss", "crop_batch", "motion_weight", "weighted_mse", "teacher_loss", "encode_batch", "drop_conditions", "normalize_latents"]

log = logging.getLogger("lpm_rt.train")


def edge_weight(video: torch.Tensor, edge: float) -> torch.Tensor | float:
    """1 + edge * |spatial gradient| / its mean, per pixel ([B, 1, T, H, W]); 1.0 when edge == 0.
    Small features (eyes, the mouth) are a few pixels of a frame: a plain mean lets a blurry
    decoder ignore them, this weight does not."""
    if edge <= 0:
        return 1.0
    gx = F.pad((video[..., :, 1:] - video[..., :, :-1]).abs(), (0, 1))
    gy = F.pad((video[..., 1:, :] - video[..., :-1, :]).abs(), (0, 0, 0, 1))
    g = (gx + gy).sum(1, keepdim=True)
    return 1.0 + edge * g / g.mean().clamp_min(1e-6)


def motion_weight(video: torch.Tensor, motion: float) -> torch.Tensor | float:
    """1 + motion * |x - its clip's temporal mean| / the mean of that, per position
    ([B, 1, T, ...]); 1.0 when motion == 0. What moves within a clip (the mouth while speaking, the
    eyes in a blink, a nod) is a sliver of a talking-head frame: weighting it is what makes a
    small model spend its capacity on it rather than on the static background."""
    if motion <= 0:
        return 1.0
    d = (video - video.mean(2, keepdim=True)).abs().sum(1, keepdim=True)
    return 1.0 + motion * d / d.mean().clamp_min(1e-6)


def crop_batch(batch: Batch, size: int, align: int, gen: torch.Generator) -> Batch:
    """One random ``size`` x ``size`` crop of every frame and reference of ``batch`` (the VAE is
    fully convolutional, so it trains on crops). The offset is a multiple of ``align`` (the VAE's
    stride: crops see the latent grid as whole frames do), drawn within the central half of the
    slack around the frame's centre, where a talking head's face is."""
    H, W = batch.video.shape[-2:]
    if size % align or size > min(H, W):
        raise ValueError(f"crop {size} must be a multiple of {align} and at most {min(H, W)}")
    off = []
    for n in (H, W):
        c, r = (n - size) // 2, (n - size) // 4
        lo, hi = (c - r) // align, (c + r) // align
        off.append(int(torch.randint(lo, hi + 1, (1,), generator=gen)) * align)
    (y, x) = off
    mouth = None if batch.mouth is None else batch.mouth - batch.mouth.new_tensor([x, y, 0.0])
    return Batch(batch.video[..., y:y + size, x:x + size].contiguous(), batch.mels,
                 batch.ref_images[..., y:y + size, x:x + size].contiguous(), batch.ref_kinds, batch.tag_ids, mouth)


def flicker(rec: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Mean |frame-to-frame change of ``rec`` - that of ``video``| over [B, C, T, H, W] clips:
    zero for an error that holds still (an offset, a blur that does not change), large for a
    decoder whose output changes between frames where the clip does not."""
    return ((rec[:, :, 1:] - rec[:, :, :-1]) - (video[:, :, 1:] - video[:, :, :-1])).abs().mean()


def weighted_mean(x: torch.Tensor, w: torch.Tensor | float = 1.0) -> torch.Tensor:
    """mean(w * x) / mean(w) (w broadcast over x): a plain mean when ``w`` is a number."""
    return (w * x).mean() / (w.mean() if torch.is_tensor(w) else 1.0)


def within_block(rec: torch.Tensor, video: torch.Tensor, frames: int, weight=1.0) -> torch.Tensor:
    """Weighted mean |error| of each frame's deviation from the mean of its latent frame's
    ``frames`` frames, [B, C, T, H, W] clips: what a decoder draws inside a latent frame (the
    mouth between two latent frames' openings) against the clip's, which a plain reconstruction
    loss weighs little next to the latent frame's mean image."""
    def dev(x):
        x = x.unflatten(2, (-1, frames))                                  # (B, C, F, frames, H, W)
        return (x - x.mean(3, keepdim=True)).flatten(2, 3)
    return weighted_mean((dev(rec) - dev(video)).abs(), weight)


def vae_loss(vae, batch: Batch, gen: torch.Generator, latent_noise: float = 0.1, reg: float = 0.1,
             edge: float = 0.0, motion: float = 0.0, mouth: float = 0.0, temporal: float = 0.0,
             within: float = 0.0) -> dict:
    """Reconstruction (L1 + MSE, optionally edge-, motion- and mouth-weighted: :func:`edge_weight`,
    :func:`motion_weight`, :func:`mouth_weight`, the last two on the clip only) of the clip and of its first reference
    as a still clip, + ``temporal`` x :func:`flicker` of the reconstruction, + ``within`` x
    :func:`within_block` (the same weights: motion inside a latent frame), + the latent-scale
    penalty (per channel: mean^2 + (var - 1)^2). ``latent_noise`` is relative to the latents'
    current std, so the decoder's robustness margin does not depend on their scale."""
    video = batch.video                                                   # (B, 3, T, H, W)
    w_motion = motion_weight(video, motion) * mouth_weight(batch.mouth, mouth, tuple(video.shape[-2:]))
    B, R = batch.ref_images.shape[:2]
    if R:
        T = vae.cfg.vae_temporal
        still = batch.ref_images[:, :1].transpose(1, 2).expand(-1, -1, T, -1, -1)   # first ref, still
        video = torch.cat([video, still], 2)
        if torch.is_tensor(w_motion):
            w_motion = F.pad(w_motion, (0, 0, 0, 0, 0, T), value=1.0)
    z = vae.encode(video)                                                 # (B, z, F, h, w)
    rec = vae.decode(z + latent_noise * z.detach().std() * randn(z.shape, gen, z.device))
    err = rec - video
    w = edge_weight(video, edge) * w_motion
    l_rec = weighted_mean(err.abs() + err.pow(2), w)
    mean = z.mean(dim=(0, 2, 3, 4))
    var = z.var(dim=(0, 2, 3, 4))
    l_reg = (mean.pow(2) + (var - 1).pow(2)).mean()
    out = {"loss": l_rec + reg * l_reg, "rec": l_rec.detach(), "latent_std": var.detach().mean().sqrt()}
    if within:
        l_within = within_block(rec, video, vae.cfg.vae_temporal, w)
        out["loss"] = out["loss"] + within * l_within
        out["within"] = l_within.detach()
    if temporal:
        l_flicker = flicker(rec, video)
        out["loss"] = out["loss"] + temporal * l_flicker
        out["flicker"] = l_flicker.detach()
    return out


@torch.no_grad()
def normalize_latents(vae, batches, dist: Dist | None = None) -> torch.Tensor:
    """Give every latent channel unit std over ``batches`` by folding the scale into the VAE's
    weights: encoder's last conv / std, decoder's first conv * std. Exact (zero padding maps to
    zero either way), so reconstructions are unchanged while the DiT sees unit-scale latents
    (what Wan's fixed per-channel latent statistics do). Statistics are pooled over ranks.
    Returns the std that was folded."""
    z = torch.cat([vae.encode(b.video).transpose(0, 1).flatten(1) for b in batches], 1).double()  # (z, N)
    stats = torch.stack([z.sum(1), z.pow(2).sum(1), torch.full_like(z[:, 0], z.shape[1])])      # (3, z)
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(stats)
    mean = stats[0] / stats[2]
    std = (stats[1] / stats[2] - mean ** 2).clamp_min(1e-8).sqrt().float().clamp_min(1e-4)     # (z,)
    vae.enc_out.weight.div_(std.view(-1, 1, 1, 1))
    vae.enc_out.bias.div_(std)
    vae.dec_in.weight.mul_(std.view(1, -1, 1, 1))
    return std


@torch.no_grad()
def encode_batch(vae, batch: Batch) -> tuple:
    """-> (latents [B, z, F, h, w], Cond with reference latents [B, z, R, h, w] or None)."""
    z = vae.encode(batch.video)
    B, R = batch.ref_images.shape[:2]
    refs = None
    if R:
        r = vae.encode_image(batch.ref_images.flatten(0, 1))               # (B*R, z, 1, h, w)
        refs = r.view(B, R, *r.shape[1:]).squeeze(3).transpose(1, 2).contiguous()   # (B, z, R, h, w)
    return z, Cond(batch.tag_ids, batch.mels, refs, batch.ref_kinds if R else None)


def drop_conditions(cond: Cond, gen: torch.Generator, p_text: float, p_audio: float, p_refs: float) -> Cond:
    """Condition dropout for classifier-free guidance (see the module docstring)."""
    B = cond.tag_ids.shape[0]
    u = torch.rand(B, 4, generator=gen).to(cond.tag_ids.device)
    tags = torch.where((u[:, 0] < p_text)[:, None], torch.zeros_like(cond.tag_ids), cond.tag_ids)
    mels = []
    for j, m in enumerate(cond.mels):                # drop both tracks, or one of them
        drop = (u[:, 1] < p_audio) | (u[:, 2 + j] < p_audio / 2)
        mels.append(torch.where(drop[:, None, None], torch.full_like(m, SILENCE_MEL), m))
    keep_refs = cond.refs is not None and float(torch.rand(1, generator=gen)) >= p_refs
    return Cond(tags, tuple(mels), cond.refs if keep_refs else None, cond.ref_kinds if keep_refs else None)


def teacher_loss(net, x0, cond: Cond, gen: torch.Generator, ref_time_index: int, shift: float = 1.0,
                 motion: float = 0.0, mouth_w: torch.Tensor | float = 1.0, sync: float = 0.0,
                 probe: MouthProbe | None = None, mouth: torch.Tensor | None = None,
                 nod: float = 0.0, head: HeadProbe | None = None, nod_high: float = 0.0) -> dict:
    """Flow matching: || v(x_sigma, 1000 sigma) - (noise - x0) ||^2, one sigma per clip;
    ``motion`` > 0 weights latent positions by :func:`motion_weight` of x0 (what moves: the
    mouth the audio drives), ``mouth_w`` by a latent-grid :func:`mouth_weight`; ``sync`` > 0 adds
    ``sync`` * :func:`sync_loss` of the predicted x0 (``probe`` and the clips' ``mouth`` needed);
    ``nod`` > 0 adds ``nod`` * the same loss with the :class:`HeadProbe` ``head``, in units of the
    head position's variance over the data (a batch of still heads has almost none).
    ``nod_high`` > 0 draws that fraction of the clips at sigma in [0.9, 1] and counts the head
    loss on those alone: at the logit-normal's usual levels the head's position shows through
    the noisy latents (P(sigma >= 0.9) is 1.4 %), so the loss is met without reading the audio."""
    B, Fr = x0.shape[0], x0.shape[2]
    sigma = sample_sigma(B, gen, shift)
    high = torch.zeros(B, dtype=torch.bool)
    if nod > 0 and nod_high > 0:
        high = torch.rand(B, generator=gen) < nod_high
        sigma = torch.where(high, 0.9 + 0.1 * torch.rand(B, generator=gen), sigma)
    sigma = sigma.to(x0.device)
    noise = randn(x0.shape, gen, x0.device)
    x_s = add_noise(x0, noise, sigma)
    v = velocity(net, x_s, (1000.0 * sigma)[:, None].expand(B, Fr), cond, ref_time_index=ref_time_index)
    w = motion_weight(x0, motion) * mouth_w
    out = {"loss": weighted_mse(v, noise - x0, w)}
    if sync > 0 or nod > 0:
        require_mouth(mouth)
        x0_pred = x_s - sigma.view(-1, 1, 1, 1, 1) * v
        out["flow"] = out["loss"].detach()
        if sync > 0:
            l_sync = sync_loss(probe, x0_pred, x0, mouth)
            out["sync"] = l_sync.detach()
            out["loss"] = out["loss"] + sync * l_sync
        if nod > 0:
            if nod_high > 0:
                sel = high.nonzero().flatten().to(x0.device)
                l_nod = sync_loss(head, x0_pred[sel], x0[sel], mouth[sel], norm=head.var) if len(sel) \
                    else x0_pred.sum() * 0.0
            else:
                l_nod = sync_loss(head, x0_pred, x0, mouth, norm=head.var)
            out["nod"] = l_nod.detach()
            out["loss"] = out["loss"] + nod * l_nod
    return out


def weighted_mse(pred, target, w: torch.Tensor | float = 1.0) -> torch.Tensor:
    """mean(w * (pred - target)^2) / mean(w): a plain MSE when ``w`` is 1.0."""
    if not torch.is_tensor(w):
        return F.mse_loss(pred, target)
    return (w * (pred - target).pow(2)).mean() / w.expand_as(pred[:, :1]).mean()


def fit_mouth_probe(pool: EncodedPool, cfg, seed: int, clips: int = 64, kind=MouthProbe) -> MouthProbe:
    """A :class:`MouthProbe` (or ``kind``, e.g. :class:`HeadProbe`) fitted on ``clips`` of
    ``pool``'s encoder latents (held apart from the step indices by a fixed offset, drawn the same
    on every rank and resume)."""
    items = [pool.batch([seed * 7919 + 10_000 + i], mouth=True) for i in range(clips)]
    s = cfg.stream
    probe = kind((s.height, s.width), cfg.model.vae_temporal)
    return probe.fit([it[0] for it in items], [it[2] for it in items])


def widen_audio_window(sd: dict, context: int) -> dict:
    """``sd`` (a backbone's or refiner's state dict) for a model whose audio window holds
    ``context`` + 1 latent frames: an ``audio_encoder.window`` of fewer slots keeps its slots as
    the newest ones (a frame's own audio last) and its oldest slot is repeated for the earlier
    frames, so a window widened from [previous | own] starts out reading the added frames as it
    read the previous one. Other entries pass through; a wider window than ``context`` is refused."""
    out = dict(sd)
    for k, w in sd.items():
        if not k.endswith("audio_encoder.window"):
            continue
        n = context + 1
        if w.shape[0] > n:
            raise ValueError(f"{k}: {w.shape[0]} audio-window slots, more than audio_context {context} holds")
        out[k] = torch.cat([w[:1].expand(n - w.shape[0], -1), w], 0)
    return out


AUDIO_PARTS = ("audio_encoder.", ".audio_attn.", ".norm_audio.")


def audio_groups(net, mult: float) -> list:
    """Optimizer groups: the audio path (encoder, audio cross-attention, its norm) with
    ``lr_mult`` = ``mult`` (the loop scales its schedule by it), everything else at 1. The audio
    path starts near zero (its output projections are scaled down at init, so a Wan checkpoint
    behaves as Wan) and learns slowly at the backbone's rate."""
    audio, rest = [], []
    for name, p in net.named_parameters():
        (audio if any(part in f".{name}" for part in AUDIO_PARTS) else rest).append(p)
    return [{"params": rest, "lr_mult": 1.0}, {"params": audio, "lr_mult": float(mult)}]


def train_base(args, dist: Dist) -> int:
    cfg = preset(args.preset)
    s = cfg.stream
    # default clip: every RoPE time index the stream uses (it re-bases below s.time_limit)
    frames = args.frames or max(2 * s.chunk_frames + s.history_frames, s.time_limit)
    world = dict(voice=args.voice, focus=args.focus)
    source = make_source(cfg, clip_frames(cfg, frames), args.data, args.source, **world)
    vae_frames, vae_batch = args.vae_frames or frames, args.vae_batch or args.batch
    vae_source = source if vae_frames == frames else \
        make_source(cfg, clip_frames(cfg, vae_frames), args.data, args.source, **world)
    src = None
    if args.init:                                   # warm start (weights only; optimizers start fresh)
        from ..checkpoint import load_dir
        src, _ = load_dir(args.init)
    slots = getattr(args, "audio_window_pos", False) or (src is not None and src.cfg.model.audio_window_pos)
    ctx = getattr(args, "audio_context", None)
    ctx = ctx if ctx is not None else (src.cfg.model.audio_context if src is not None else cfg.model.audio_context)
    spk = getattr(args, "speaker_audio_context", None)
    spk = spk if spk is not None else (src.cfg.model.speaker_audio_context if src is not None else None)
    try:
        audio = dict(audio_window_pos=slots, audio_context=ctx, speaker_audio_context=spk)
        cfg = cfg.replace(model=cfg.model.replace(**audio))
    except ValueError as e:
        raise ValueError(f"--speaker-audio-context / --audio-context: {e}") from None
    if src is not None and ctx < src.cfg.model.audio_context:
        raise ValueError(f"--audio-context {ctx}: --init {args.init} reads {src.cfg.model.audio_context} frames "
                         "of context already (a window can widen, not shrink)")
    torch.manual_seed(args.seed)
    model = OnlineLPM(cfg).init_weights(args.seed)
    if src is not None:
        if src.cfg.model.replace(**audio) != cfg.model:
            raise ValueError(f"--init {args.init}: model {src.cfg.model.name} is not the {cfg.name} preset's")
        if getattr(args, "vae_fresh_decoder", False):   # the encoder only: the decoder keeps init_weights'
            model.vae.load_state_dict({k: v for k, v in src.vae.state_dict().items() if k.startswith("enc")},
                                      strict=False)
        else:
            model.vae.load_state_dict(src.vae.state_dict())
        # a source without audio-window slots: they start at zero (init_weights), all else loads;
        # a narrower window than --audio-context's is widened (widen_audio_window)
        load_full_state_dict(model.backbone, widen_audio_window(src.backbone.state_dict(), ctx),
                             new_ok=("audio_encoder.window",))
    model = model.to(dist.device)
    broadcast_module(model, dist)
    maybe_fsdp(model.backbone, dist, args.fsdp)                 # before the optimizers see its parameters
    run = RunDir(args.out, dist)
    optims = {"vae": torch.optim.AdamW(model.vae.parameters(), lr=args.vae_lr, weight_decay=0.0),
              "teacher": torch.optim.AdamW(audio_groups(model.backbone, args.audio_lr_mult), lr=args.lr,
                                           weight_decay=0.01)}
    params = {"vae": list(model.vae.parameters()), "teacher": list(model.backbone.parameters())}

    def batch_at(stage, step):
        idx = batch_indices(args.seed, stage, step, dist.rank, dist.world, args.batch)
        return collate([source.clip(i) for i in idx], cfg).to(dist.device)

    # the teacher's clips, encoded once per pool slot (the VAE is frozen by then)
    pool = EncodedPool(source, cfg, lambda b: encode_batch(model.vae, b), args.pool, dist.device)

    probes: dict = {}

    def fitted(kind, weight):                       # fitted once on the pool's encoder latents
        if weight <= 0:
            return None
        if kind not in probes:
            probes[kind] = fit_mouth_probe(pool, cfg, args.seed, kind=kind)
        return probes[kind]

    vae_clips: dict = {}

    def vae_clip(i):                                # rendered clips, kept per pool slot
        if args.vae_pool <= 0:
            return vae_source.clip(i)
        key = i % args.vae_pool
        if key not in vae_clips:
            vae_clips[key] = vae_source.clip(key)
        return vae_clips[key]

    def vae_step(step):
        g = step_generator(args.seed, "vae", step, dist.rank)
        idx = batch_indices(args.seed, "vae", step, dist.rank, dist.world, vae_batch)
        batch = collate([vae_clip(i) for i in idx], cfg).to(dist.device)
        if args.vae_crop and step % 4 != 3:         # crops, with a whole frame every 4th step
            batch = crop_batch(batch, args.vae_crop, cfg.model.vae_spatial, g)
        out = vae_loss(model.vae, batch, g, latent_noise=getattr(args, "vae_latent_noise", 0.1),
                       edge=args.vae_edge, motion=args.vae_motion, mouth=args.vae_mouth,
                       temporal=getattr(args, "vae_temporal", 0.0), within=getattr(args, "vae_within", 0.0))
        out["loss"].backward()
        return {k: float(v.detach()) for k, v in out.items()}

    def teacher_step(step):
        g = step_generator(args.seed, "teacher", step, dist.rank)
        x0, cond, mouth = pool.batch(batch_indices(args.seed, "teacher", step, dist.rank, dist.world, args.batch),
                                     mouth=True)
        cond = drop_conditions(cond, g, args.p_drop_text, args.p_drop_audio, args.p_drop_refs)
        mw = latent_mouth_weight(cfg.model, mouth, args.mouth, (s.height, s.width))
        out = teacher_loss(model.backbone, x0, cond, g, s.ref_time_index, args.shift, args.motion, mw,
                           args.sync, fitted(MouthProbe, args.sync), mouth,
                           getattr(args, "nod", 0.0), fitted(HeadProbe, getattr(args, "nod", 0.0)),
                           getattr(args, "nod_high", 0.0))
        out["loss"].backward()
        return {k: float(v.detach()) for k, v in out.items()}

    def train_only(part):
        def setup(start):
            model.requires_grad_(False)
            getattr(model, part).requires_grad_(True)
            if part == "vae" and args.vae_freeze_encoder:   # the latent space stays as it is
                model.vae.encoder.requires_grad_(False)
                model.vae.enc_out.requires_grad_(False)
            if part == "backbone" and getattr(args, "audio_freeze", False):   # keeps what --audio-pretrain taught
                model.backbone.audio_encoder.requires_grad_(False)
            if part == "backbone" and start == 0 and not args.vae_freeze_encoder:   # once, before the
                # teacher's first step (a frozen encoder is unit-scale already: --init)
                std = normalize_latents(model.vae, [batch_at("latent_stats", i) for i in range(4)], dist)
                log.info("latent std folded into the VAE: %s", [round(float(x), 3) for x in std])
        return setup

    stages = [StageSpec("vae", args.vae_steps, args.vae_lr, vae_step, ("vae",), train_only("vae"))]
    aux: dict = {}
    n_audio = getattr(args, "audio_pretrain", 0)
    if n_audio > 0:                                 # before the teacher: the encoder on audio alone
        readers = audio_readers(cfg).to(dist.device)
        broadcast_module(readers, dist)
        aux["audio_readers"] = readers
        # clips where the partner speaks: in the speaking mode the head answers the avatar's own
        # speech, and the listener's window holds silence to read it from
        audio_pool = AudioLabelPool(cfg, args.audio_clips, voice=args.voice, seed=args.seed,
                                    modes=("listening", "conversation"))
        enc = list(model.backbone.audio_encoder.parameters())
        optims["audio"] = torch.optim.AdamW(enc + list(readers.parameters()), lr=args.audio_lr, weight_decay=0.01)
        params["audio"] = enc + list(readers.parameters())

        def audio_step(step):
            g = step_generator(args.seed, "audio", step, dist.rank)
            mels, head, mouth = audio_pool.batch(g, list(range(args.audio_clips)), args.audio_batch)
            out = audio_pretrain_loss(model.backbone, readers, tuple(m.to(dist.device) for m in mels),
                                      head.to(dist.device), mouth.to(dist.device))
            out["loss"].backward()
            return {k: float(v.detach()) for k, v in out.items()}

        def audio_setup(start):
            model.requires_grad_(False)
            model.backbone.audio_encoder.requires_grad_(True)

        stages.append(StageSpec("audio", n_audio, args.audio_lr, audio_step, ("audio",), audio_setup))
    stages.append(StageSpec("teacher", args.steps, args.lr, teacher_step, ("teacher",), train_only("backbone")))
    return run_stages(run, args, stages, model, aux, optims, params, {"role": "base", "preset": cfg.name})
