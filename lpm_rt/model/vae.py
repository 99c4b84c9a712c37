"""A small causal video VAE: 4x temporal, 8x spatial, 16 latent channels (Wan's latent geometry).

Encoder: each video frame -> spatial features at 1/8 resolution; a latent frame is a linear map
of its 4 frames' features (references are encoded as a still 4-frame clip).
Decoder, streaming: a latent frame -> 4 video frames. One causal temporal convolution (kernel 2)
at latent resolution carries state across frames: ``decode(z, cache)`` with a
:class:`DecoderCache` gives, chunk by chunk, exactly what one call over the whole clip gives.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig

__all__ = ["VAE", "DecoderCache"]


def _res(c):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))


class _Residual(nn.Module):
    """x + conv(silu(conv(x))): the optional ``vae_res`` blocks of each resolution stage."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class DecoderCache:
    """Temporal state of one stream's decoder: the previous latent frame's features."""

    def __init__(self):
        self.prev = None   # [B, C, h, w]


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.vae_channels                       # high-res -> low-res widths
        z, T = cfg.vae_z_dim, cfg.vae_temporal
        # encoder: 3 -> ch[0] -> ... -> ch[-1], three stride-2 stages, then per-frame latent
        enc = [nn.Conv2d(3, ch[0], 3, padding=1), nn.SiLU()]
        for i, c in enumerate(ch):
            nxt = ch[min(i + 1, len(ch) - 1)]
            enc += [nn.Conv2d(c, nxt, 4, stride=2, padding=1), nn.SiLU()]
            enc += [_Residual(nxt) for _ in range(cfg.vae_res)]
        self.encoder = nn.Sequential(*enc)
        self.enc_out = nn.Conv2d(ch[-1] * T, z, 1)        # 4 frames' features -> one latent frame
        # decoder
        self.dec_in = nn.Conv2d(z, ch[-1], 3, padding=1)
        self.dec_time = nn.Conv2d(2 * ch[-1], ch[-1], 1)   # causal temporal conv, kernel 2
        self.dec_expand = nn.Conv2d(ch[-1], T * ch[-1], 1)  # one latent frame -> T frames
        self.dec_mid = _res(ch[-1])
        ups = []
        for i in range(len(ch) - 1, -1, -1):
            c, nxt = ch[i], ch[max(i - 1, 0)]
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, nxt, 3, padding=1), nn.SiLU()]
            if i:                                    # not at full resolution, where it costs most
                ups += [_Residual(nxt) for _ in range(cfg.vae_res)]
        self.dec_up = nn.Sequential(*ups)
        self.dec_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    # ---- encode -------------------------------------------------------------------------------
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video: [B, 3, T*F, H, W] in [-1, 1] -> latents [B, z, F, H/8, W/8]."""
        B, _, n, H, W = video.shape
        T = self.cfg.vae_temporal
        f = self.encoder(video.transpose(1, 2).reshape(B * n, 3, H, W))          # (B*n, C, h, w)
        f = f.reshape(B, n // T, T * f.shape[1], *f.shape[2:]).flatten(0, 1)     # (B*F, T*C, h, w)
        z = self.enc_out(f)
        return z.view(B, n // T, *z.shape[1:]).transpose(1, 2)                   # (B, z, F, h, w)

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """img: [B, 3, H, W] in [-1, 1] -> one latent frame [B, z, 1, H/8, W/8] (a still clip)."""
        T = self.cfg.vae_temporal
        return self.encode(img.unsqueeze(2).expand(-1, -1, T, -1, -1))

    # ---- decode -------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, cache: DecoderCache | None = None) -> torch.Tensor:
        """z: [B, z, F, h, w] -> video [B, 3, T*F, 8h, 8w] in [-1, 1]. With ``cache``, continues a
        stream (the first frame of a stream sees zeros as its predecessor)."""
        B, _, Fr, h, w = z.shape
        T = self.cfg.vae_temporal
        x = self.dec_in(z.transpose(1, 2).reshape(B * Fr, -1, h, w))
        x = x.view(B, Fr, *x.shape[1:])                                           # (B, F, C, h, w)
        prev = cache.prev if cache is not None and cache.prev is not None else torch.zeros_like(x[:, 0])
        shifted = torch.cat([prev.unsqueeze(1), x[:, :-1]], dim=1)                # frame f-1 for each f
        if cache is not None:
            cache.prev = x[:, -1].detach()
        x = x + self.dec_time(torch.cat([x, shifted], dim=2).flatten(0, 1)).view_as(x)
        x = F.silu(self.dec_expand(x.flatten(0, 1)))                             # (B*F, T*C, h, w)
        x = x.reshape(B * Fr * T, -1, h, w)
        x = x + self.dec_mid(x)
        x = self.dec_out(self.dec_up(x))                                          # (B*F*T, 3, H, W)
        return torch.tanh(x).view(B, Fr * T, 3, *x.shape[2:]).transpose(1, 2)

    def init_weights(self, seed: int = 0) -> "VAE":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    m.bias.zero_()
        return self
