"""The mouth in training: where it is (loss weights) and how open it is in latent space (a probe).

The world knows, per frame, where each character's mouth is and how open it is
(:attr:`~lpm_rt.train.data.Batch.mouth`: x, y in pixels, opening in [0, 1]). Two uses:

* :func:`mouth_weight` -- a Gaussian bump of loss weight at the mouth. The mouth is ~0.3 % of a
  128 x 128 talking-head frame, about one latent cell: in a plain mean its error is noise next to
  the rest of the frame.
* :class:`MouthProbe` -- a linear read-out of the mouth opening from the VAE latents around the
  mouth (sampled at the mouth's position, so one probe serves every character and head pose),
  fitted by ridge regression on encoder latents. In the demo VAE the opening is ~3 % of the
  latents' variance around the mouth: a flow-matching loss hardly notices whether a teacher got
  it right, so a teacher trained on that loss alone learns to ignore the speaker audio, the only
  thing that predicts it. ``probe.read(x0_pred)`` against ``probe.read(x0)`` is a loss on exactly
  that direction (:func:`sync_loss`), and the within-clip correlation of the two is the teacher's
  lip sync in latent space (``scripts/audio_gap.py``).
* :class:`HeadProbe` -- the same kind of read-out for the head's vertical position (its nods):
  the world's listener nods on the partner's stressed syllables, a few pixels of head motion
  that the listener audio alone predicts. The shipped model's head does not answer that audio
  at all, and a loss on this probe (``--nod``) has not yet taught a teacher to, even on an
  audio encoder pre-trained to read the nod (``--audio-pretrain``;
  ``bench/results/demo_listening/pretrain.json``).

Training-only: the runtime never sees mouth positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MOUTH_RADIUS", "require_mouth", "latent_opening", "mouth_weight", "latent_mouth_weight", "MouthProbe", "HeadProbe", "sync_loss"]

MOUTH_RADIUS = 0.05     # of the frame's shorter side: the synthetic faces' mouth half-width


def require_mouth(mouth):
    if mouth is None:
        raise ValueError("the mouth's losses need clips with mouth positions (the world generator's clips)")


def _per_latent_frame(mouth: torch.Tensor, temporal: int) -> torch.Tensor:
    """[B, T, 3] per video frame -> [B, T // temporal, 3] means over each latent frame's frames."""
    B, T, C = mouth.shape
    return mouth.reshape(B, T // temporal, temporal, C).mean(2)


def latent_opening(mouth: torch.Tensor, temporal: int) -> torch.Tensor:
    """[B, T, 3] mouth annotations -> [B, T // temporal] opening per latent frame (the probe's target)."""
    return _per_latent_frame(mouth, temporal)[..., 2]


def mouth_weight(mouth: torch.Tensor | None, weight: float, shape: tuple, stride: int = 1,
                 temporal: int = 1) -> torch.Tensor | float:
    """1 + weight * a Gaussian bump (sigma ``MOUTH_RADIUS`` of the frame) at the mouth centre,
    per position of a [B, 1, T // temporal, H // stride, W // stride] grid (pixels: stride 1; VAE
    latents: stride ``vae_spatial``, ``temporal`` ``vae_temporal``, the latent frame's mean mouth
    position). ``mouth``: [B, T, 3] (:attr:`Batch.mouth`); ``shape``: (H, W) of the frames in
    pixels. 1.0 when weight == 0."""
    if weight <= 0:
        return 1.0
    require_mouth(mouth)
    H, W = shape
    m = _per_latent_frame(mouth, temporal)                                           # (B, F, 3)
    ys = (torch.arange(H // stride, device=mouth.device) + 0.5) * stride - 0.5       # cell centres, pixels
    xs = (torch.arange(W // stride, device=mouth.device) + 0.5) * stride - 0.5
    r2 = (MOUTH_RADIUS * min(H, W)) ** 2
    d2 = (xs.view(1, 1, 1, -1) - m[..., 0, None, None]).pow(2) + (ys.view(1, 1, -1, 1) - m[..., 1, None, None]).pow(2)
    return (1.0 + weight * torch.exp(-d2 / (2 * r2)))[:, None]                      # (B, 1, F, h, w)


def latent_mouth_weight(m, mouth, weight: float, size: tuple):
    """:func:`mouth_weight` on the latent grid of ``size`` (H, W) video frames (``m``: ModelConfig)."""
    return mouth_weight(mouth, weight, size, m.vae_spatial, m.vae_temporal)


class MouthProbe:
    """Ridge read-out of the mouth opening from a ``k`` x ``k`` grid of latent cells centred on the
    mouth (bilinear samples, one cell apart), per latent frame. ``size``: (H, W) of the frames the
    latents encode; ``temporal``: video frames per latent frame."""

    LAM = 10.0                                         # ridge strength of :meth:`fit`

    def __init__(self, size: tuple, temporal: int, k: int = 3):
        self.size, self.temporal, self.k = tuple(size), int(temporal), int(k)
        self.mu = self.sd = self.w = None
        self.b, self.var = 0.0, None

    def features(self, z: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        """z: [B, C, F, h, w] latents, mouth [B, F * temporal, 3] -> [B, F, C * k * k]."""
        require_mouth(mouth)
        B, C, Fr, h, w = z.shape
        H, W = self.size
        m = _per_latent_frame(mouth, self.temporal)[..., :2]                        # (B, F, 2) pixels
        step = torch.tensor([W / w, H / h], device=z.device, dtype=z.dtype)         # one cell, in pixels
        r = torch.arange(self.k, device=z.device, dtype=z.dtype) - (self.k - 1) / 2
        off = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).view(-1, 2) * step   # (k*k, 2) (x, y)
        pts = m[:, :, None, :].to(z.dtype) + off                                     # (B, F, k*k, 2)
        grid = pts / torch.tensor([W, H], device=z.device, dtype=z.dtype) * 2 - 1    # align_corners=False
        planes = z.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, h, w)
        g = grid.reshape(B * Fr, 1, -1, 2)
        s = F.grid_sample(planes, g, mode="bilinear", padding_mode="border", align_corners=False)  # (B*F, C, 1, k*k)
        return s[:, :, 0].reshape(B, Fr, C * self.k * self.k)

    @torch.no_grad()
    def target(self, mouth: torch.Tensor) -> torch.Tensor:
        """What the probe reads, [B, F]: the mouth opening averaged over each latent frame."""
        return latent_opening(mouth, self.temporal)

    def fit(self, latents: list, mouths: list, lam: float | None = None) -> "MouthProbe":
        """Ridge fit on [(z [B, C, F, h, w], mouth [B, T, 3]), ...] pairs onto :meth:`target`."""
        lam = self.LAM if lam is None else lam
        X = torch.cat([self.features(z, m).flatten(0, 1) for z, m in zip(latents, mouths)]).double()
        Y = torch.cat([self.target(m).flatten() for m in mouths]).double()
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        Xn = (X - self.mu) / self.sd
        A = Xn.T @ Xn + lam * torch.eye(X.shape[1], dtype=X.dtype)
        self.w = torch.linalg.solve(A, Xn.T @ (Y - Y.mean()))
        self.b = float(Y.mean())
        self.var = float(Y.var())                      # the target's variance over the fitting clips
        self.mu, self.sd, self.w = self.mu.float(), self.sd.float(), self.w.float()
        return self

    def read(self, z: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        """Predicted mouth opening [B, F] of latents z (differentiable in z)."""
        if self.w is None:
            raise RuntimeError("MouthProbe.read before fit")
        x = self.features(z, mouth)
        return ((x - self.mu.to(x)) / self.sd.to(x)) @ self.w.to(x) + self.b


class HeadProbe(MouthProbe):
    """Ridge read-out of the head's vertical position within a clip: the mouth centre's y per latent
    frame minus its mean over the clip, in pixels (a nod moves it ~4 px at 128 x 128, half a latent
    cell). The latents are sampled on a ``k`` x ``k`` grid at the clip's *mean* mouth position, the
    same for every frame, so the face moving past it is what the features see, and taken relative
    to their own mean over the clip, so the character's looks cancel. On encoder latents of held-out
    world clips its reading correlates ~0.9 with the truth (demo VAE, k = 3)."""

    LAM = 100.0

    def features(self, z: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        require_mouth(mouth)
        still = mouth.clone()
        still[..., :2] = mouth[..., :2].mean(1, keepdim=True)
        f = super().features(z, still)
        return f - f.mean(1, keepdim=True)

    def target(self, mouth: torch.Tensor) -> torch.Tensor:
        y = _per_latent_frame(mouth, self.temporal)[..., 1]
        return y - y.mean(1, keepdim=True)


def sync_loss(probe: MouthProbe, x0_pred: torch.Tensor, x0: torch.Tensor, mouth: torch.Tensor,
              norm: float | None = None) -> torch.Tensor:
    """Mean squared difference of the probe's reading of predicted and true latents, in units of
    the true reading's variance over the batch (scale-free: 1 is as bad as ignoring the mouth), or
    of ``norm`` when given (e.g. ``probe.var``, the opening's variance over the data: a batch of
    quiet clips has almost no variance of its own, and dividing by it turns the probe's noise on
    them into the largest loss of the run)."""
    want = probe.read(x0, mouth).detach()
    var = want.var().clamp_min(1e-4) if norm is None else max(float(norm), 1e-4)
    return (probe.read(x0_pred, mouth) - want).pow(2).mean() / var
