"""``lpm-rt plan``: a roofline planner -- FLOPs and bytes per chunk per stage, predicted fps against
the device's ceilings, and the memory budget -- to size a deployment before owning the device.

Work of one denoising pass of a DiT with L layers, width d, FFN width f over a chunk of
T = chunk_frames * tokens_per_frame query tokens attending to Lk = (refs + history + chunk) *
tokens_per_frame keys (the formulas of ../shared/ANCHORS.md):

    linear    = 2 T (4 d^2 [self q,k,v,o] + 2 d^2 [text q,o] + 2 d^2 [audio q,o] + 2 d f [FFN]) L
    attention = 4 T Lk d L                        (QK^T and PV, self-attention)
    cross     = 4 T (Lt + Ka) d L                 (text: Lt tokens, K/V cached per session; audio: Ka per frame)

On FP8 devices the fp8 block form absorbs the output projection of a stream shorter than the head
dim into its values (``ops.cross_attention_out``): for the audio (Ka < d / H), 2 T d^2 L leave
``linear`` and the P.V product grows to 2 T Ka H d L (``absorbed_audio``); the text (Wan's
Lt = 512) keeps its projection. The runtime then keeps Wo as [H, D, C] in the activation dtype,
d^2 per block (memory "absorbed audio projections").

The backbone runs ``backbone_steps`` passes, the refiner one pass over [refs | chunk]. VAE decode
and the audio encoder are counted by running the model's own modules on the meta device under
``torch.utils.flop_counter`` (exact for this code base). Bytes are weights + KV read/written +
an activation estimate (each linear's input and output once). Stage time = max(FLOPs / (peak *
mma_util), bytes / (bandwidth * bw_util)); stages run back to back (the refiner/decode overlap
with the next backbone is not credited), so the fps is a conservative roofline prediction.

``--kernels measured`` replaces the utilisation assumptions of the linear and attention stages
with what this project's kernels reached when they were timed (:data:`MEASURED`; h100 only so
far): the prediction for today's code rather than for the hardware.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from lpm_rt.config import PRESETS, preset
from lpm_rt.ops.cross_attention import absorbs

__all__ = ["Device", "DEVICES", "Plan", "plan", "pass_flops", "kv_cache_bytes", "main"]


@dataclass(frozen=True)
class Device:
    name: str
    peak: dict              # dense TFLOP/s (TOPS) by precision
    bandwidth: float        # bytes/s
    memory: float           # bytes usable by the model
    linear: str             # precision of the linears' math
    attention: str          # precision of the attention math
    weight_bytes: float     # bytes per quantized linear weight
    act_bytes: float
    kv_bytes: float
    source: str


DEVICES = {
    "h100": Device("H100 SXM", dict(fp8=1979e12, bf16=989e12), 3.35e12, 80e9, "fp8", "fp8", 1, 2, 1,
                   "NVIDIA H100 datasheet (dense)"),
    "orin-agx": Device("Jetson AGX Orin 64GB", dict(int8=85e12, fp16=42e12), 204.8e9, 64e9, "fp16", "fp16", 1, 2, 2,
                       "Orin technical brief: ~170 sparse / ~85 dense INT8 TOPS GPU, ~42 dense FP16 TFLOP/s, 204.8 GB/s"),
    "orin-nano": Device("Jetson Orin Nano Super 8GB", dict(int8=33.5e12, fp16=16.75e12), 102e9, 8e9, "fp16", "fp16",
                        1, 2, 2, "datasheet: 67 sparse INT8 TOPS (33.5 dense), 102 GB/s; FP16 = INT8 / 2"),
}


# Throughput of this project's kernels at production shapes, timed on a GPU (FLOP/s), with where
# each figure comes from. Attention over e4m3 pages with bf16 dots (the h100 artifact's form) and
# over bf16 pages (``lpm-rt compile --kv-dtype bf16``); the FP8 GEMM with the h100 table's tiles, for
# every linear -- the row quantization before the o and FFN-down GEMMs (memory-bound, ~0.05 ms at
# 9360 x 13824) was not timed yet, so the linear stage is a little optimistic.
MEASURED = {
    "h100": dict(device="NVIDIA H200 (the H100's SM), 2026-12-04, bench/results/gpu-20261204-3",
                 linear=1141e12,               # fp8_linear 128x128 FAST_ACCUM, lpm-17b 6f ffn-up (kernels.json)
                 attention={1: 273e12, 2: 331e12}),  # paged attention by KV bytes, lpm-17b 6f, the h100
                                                     # table's tile (fp8 pages: fp16 dots; tune.json)
}


def pass_flops(m, tokens: int, kv_tokens: int, layers: int, text_tokens: int, audio_tokens: int,
               absorbed_audio: bool = False) -> dict:
    """FLOPs of one DiT pass: {linear, attention, cross} (formulas in the module docstring)."""
    d, f = m.dim, m.ffn_dim
    audio_o = d * d if absorbed_audio else 0                  # the audio output projection, absorbed
    audio_pv = 2 * audio_tokens * d * (m.num_heads if absorbed_audio else 1)
    return dict(linear=2 * tokens * (4 * d * d + 2 * d * d + 2 * d * d - audio_o + 2 * d * f) * layers,
                attention=4 * tokens * kv_tokens * d * layers,
                cross=(4 * tokens * text_tokens * d + 2 * tokens * audio_tokens * d + tokens * audio_pv) * layers)


def kv_cache_bytes(m, tokens_per_frame: int, frames: int, layers: int, bytes_per: float) -> float:
    """K and V of ``frames`` latent frames over ``layers`` layers."""
    return frames * tokens_per_frame * 2 * m.dim * layers * bytes_per


def _meta_counts(cfg, frames: int, lh: int, lw: int) -> dict:
    """FLOPs and activation bytes (elements written) of VAE decode and the audio encoder, from the
    model's modules on the meta device; parameter counts by group."""
    from torch.utils.flop_counter import FlopCounterMode

    from lpm_rt.model.online import OnlineLPM

    m = cfg.model
    with torch.device("meta"):
        model = OnlineLPM(cfg)
    written = [0]
    hooks = [mod.register_forward_hook(lambda mod, i, o: written.__setitem__(0, written[0] + o.numel()))
             for mod in model.vae.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Upsample))]
    with torch.device("meta"), FlopCounterMode(display=False) as fc:
        model.vae.decode(torch.zeros(1, m.vae_z_dim, frames, lh, lw))
    vae = dict(flops=fc.get_total_flops(), elems=written[0])
    for h in hooks:
        h.remove()
    mel = torch.zeros(1, (m.audio_context + frames) * model.backbone.audio_encoder.mel_per_frame, m.n_mels, device="meta")
    with FlopCounterMode(display=False) as fc:
        model.backbone.audio_encoder(mel)
    n_lin = sum(p.numel() for net in (model.backbone, model.refiner) for k, p in net.named_parameters()
                if k.startswith("blocks.") and p.dim() == 2)
    return dict(vae=vae, audio_flops=fc.get_total_flops(),
                params=dict(linear=n_lin, other=sum(p.numel() for p in model.parameters()) - n_lin,
                            vae=sum(p.numel() for p in model.vae.parameters())))


@dataclass
class Plan:
    model: str
    device: Device
    width: int
    height: int
    chunk_frames: int
    history: int
    refs: int
    steps: int
    tokens_per_frame: int
    stages: dict            # name -> dict(flops, bytes, seconds)
    memory: dict            # name -> bytes
    fps: float              # predicted at the utilisation assumptions
    fps_ceiling: float      # at 100% of peak and bandwidth
    video_frames: int
    measured: str | None = None   # the kernels' measured throughput used instead of mma_util (its source)
    kv_bytes: float = 1.0


def plan(model: str, device: str, width: int, height: int, chunk_frames: int | None = None,
         history: int | None = None, refs: int | None = None, mma_util: float = 0.5, bw_util: float = 0.7,
         measured: bool = False, kv_bytes: float | None = None) -> Plan:
    cfg = preset(model)
    m, s = cfg.model, cfg.stream
    dev = DEVICES[device]
    C = s.chunk_frames if chunk_frames is None else chunk_frames
    Hf = s.history_frames if history is None else history
    R = s.reference_slots if refs is None else refs
    down = m.vae_spatial * m.patch_size[1]
    if width % down or height % down:
        raise ValueError(f"resolution {width}x{height} must be a multiple of {down}")
    lh, lw = height // m.vae_spatial, width // m.vae_spatial
    tpf = (lh // m.patch_size[1]) * (lw // m.patch_size[2])
    T = C * tpf
    ka = m.audio_window_tokens
    counts = _meta_counts(cfg, C, lh, lw)
    peak_lin, peak_att = dev.peak[dev.linear], dev.peak[dev.attention]
    wb, ab, kb = dev.weight_bytes, dev.act_bytes, dev.kv_bytes if kv_bytes is None else kv_bytes
    rate = {}                                  # stage kind -> FLOP/s reached, replacing peak * mma_util
    if measured:
        if device not in MEASURED:
            raise ValueError(f"no kernel measurements for {device}: only {', '.join(MEASURED)} kernels have been timed")
        att = MEASURED[device]["attention"]
        if kb not in att:
            raise ValueError(f"no attention measurement with {kb:g}-byte KV pages on {device}")
        rate = dict(linear=MEASURED[device]["linear"], attention=att[kb])
    lin_w_layer = (counts["params"]["linear"] / (m.num_layers + m.refiner_layers))   # linear params per block
    absorbed = dev.linear == "fp8" and absorbs(ka, m.head_dim)

    def dit(layers, kv_frames, passes):
        fl = pass_flops(m, T, kv_frames * tpf, layers, m.text_len, ka, absorbed)
        act = T * (12 * m.dim + 2 * m.ffn_dim) * ab * layers
        kv = kv_cache_bytes(m, tpf, kv_frames, layers, kb) + kv_cache_bytes(m, tpf, C, layers, kb)
        return dict(linear=(fl["linear"] * passes, (lin_w_layer * layers * wb + act) * passes, peak_lin, "linear"),
                    attention=((fl["attention"] + fl["cross"]) * passes, kv * passes, peak_att, "attention"))

    bb, rf = dit(m.num_layers, R + Hf + C, s.backbone_steps), dit(m.refiner_layers, R + C, 1)
    audio_kv = 2 * 2 * ka * C * m.audio_dim * m.dim * (m.num_layers + m.refiner_layers)
    raw = {"backbone linear": bb["linear"], "backbone attention": bb["attention"],
           "refiner linear": rf["linear"], "refiner attention": rf["attention"],
           "vae decode": (counts["vae"]["flops"], 2 * counts["vae"]["elems"] * ab + counts["params"]["vae"] * ab,
                          dev.peak[dev.attention], None),
           "audio": (4 * counts["audio_flops"] + audio_kv, 0.0, dev.peak[dev.attention], None)}
    stages, total, ceiling = {}, 0.0, 0.0
    for name, (fl, by, pk, kind) in raw.items():
        sec = max(fl / rate.get(kind, pk * mma_util), by / (dev.bandwidth * bw_util))
        stages[name] = dict(flops=fl, bytes=by, seconds=sec)
        total += sec
        ceiling += max(fl / pk, by / dev.bandwidth)
    frames = C * m.vae_temporal
    p = counts["params"]
    memory = {"weights": p["linear"] * wb + p["other"] * ab,
              "kv pages (backbone)": kv_cache_bytes(m, tpf, R + Hf + C, m.num_layers, kb),
              "kv pages (refiner)": kv_cache_bytes(m, tpf, R + C, m.refiner_layers, kb),
              "absorbed audio projections": (m.dim ** 2 * ab * (m.num_layers + m.refiner_layers)) if absorbed else 0.0,
              "activations (est.)": T * (4 * m.dim + m.ffn_dim) * ab + 2 * max(counts["vae"]["elems"] / max(frames, 1), 0) * ab}
    memory["total"] = sum(memory.values())
    return Plan(model, dev, width, height, C, Hf, R, s.backbone_steps, tpf, stages, memory,
                fps=frames / total, fps_ceiling=frames / ceiling, video_frames=frames,
                measured=MEASURED[device]["device"] if measured else None, kv_bytes=kb)


def anchor_pass(model: str, width: int, height: int, chunk_frames: int = 6, history: int = 12, refs: int = 3) -> dict:
    """One backbone denoising pass as in ANCHORS.md: TFLOP {linear, attention, total} and the fp8 KV cache GB
    (references + history)."""
    cfg = preset(model)
    m = cfg.model
    tpf = (height // m.vae_spatial // m.patch_size[1]) * (width // m.vae_spatial // m.patch_size[2])
    ka = m.audio_window_tokens
    fl = pass_flops(m, chunk_frames * tpf, (refs + history + chunk_frames) * tpf, m.num_layers, m.text_len, ka)
    return dict(tokens_per_frame=tpf, linear=fl["linear"] / 1e12, attention=fl["attention"] / 1e12,
                total=sum(fl.values()) / 1e12, kv_fp8_gb=kv_cache_bytes(m, tpf, refs + history, m.num_layers, 1) / 1e9)


def format_plan(p: Plan) -> str:
    d = p.device
    lines = [f"{p.model} @ {p.width}x{p.height} on {d.name} ({d.source})",
             f"chunk {p.chunk_frames} latent frames = {p.video_frames} video frames, {p.tokens_per_frame} tokens/frame, "
             f"history {p.history}, refs {p.refs}, {p.steps} backbone passes + 1 refiner pass; "
             f"linear math {d.linear}, attention {d.attention}, weights {d.weight_bytes:g} B, KV {p.kv_bytes:g} B",
             f"{'stage':22s} {'TFLOP':>10s} {'GB':>10s} {'ms':>10s}"]
    for name, st in p.stages.items():
        lines.append(f"{name:22s} {st['flops'] / 1e12:10.3f} {st['bytes'] / 1e9:10.3f} {st['seconds'] * 1e3:10.1f}")
    tf = sum(st["flops"] for st in p.stages.values())
    lines.append(f"{'total per chunk':22s} {tf / 1e12:10.3f} {sum(st['bytes'] for st in p.stages.values()) / 1e9:10.3f} "
                 f"{sum(st['seconds'] for st in p.stages.values()) * 1e3:10.1f}")
    how = f"with the kernels as measured on {p.measured}" if p.measured else "at the utilisation assumed"
    lines.append(f"predicted {p.fps:.1f} fps {how} (roofline ceiling {p.fps_ceiling:.1f} fps; real time = 24 fps)")
    lines.append("memory: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in p.memory.items())
                 + f" of {d.memory / 1e9:.0f} GB" + ("" if p.memory["total"] <= d.memory else "  -> DOES NOT FIT"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lpm-rt plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, choices=sorted(DEVICES))
    ap.add_argument("--model", required=True, choices=sorted(PRESETS))
    ap.add_argument("--resolution", required=True, help="WxH, e.g. 832x480")
    ap.add_argument("--chunk-frames", type=int, default=None, help="latent frames per chunk (default: the preset's)")
    ap.add_argument("--history", type=int, default=None, help="history window in latent frames (default: the preset's)")
    ap.add_argument("--refs", type=int, default=None, help="reference frames (default: the preset's slots)")
    ap.add_argument("--mma-util", type=float, default=0.5, help="fraction of peak FLOP/s reached (default 0.5)")
    ap.add_argument("--bw-util", type=float, default=0.7, help="fraction of peak bandwidth reached (default 0.7)")
    ap.add_argument("--kernels", choices=("roofline", "measured"), default="roofline",
                    help="linear/attention at --mma-util of peak (default), or at what this project's kernels "
                         "reached when timed on the device (h100)")
    ap.add_argument("--kv-bytes", type=float, default=None, choices=(1, 2),
                    help="bytes per KV element (default: the target's; h100 1 = e4m3 pages, 2 = bf16 pages)")
    args = ap.parse_args(argv)
    try:
        w, h = (int(x) for x in args.resolution.lower().split("x"))
        p = plan(args.model, args.target, w, h, args.chunk_frames, args.history, args.refs, args.mma_util, args.bw_util,
                 measured=args.kernels == "measured", kv_bytes=args.kv_bytes)
    except ValueError as e:
        print(f"lpm-rt plan: error: {e}", file=sys.stderr)
        return 2
    print(format_plan(p))
    a = anchor_pass(args.model, w, h, p.chunk_frames, p.history, p.refs)
    print(f"one backbone pass: {a['total']:.1f} TFLOP (linear {a['linear']:.1f}, self-attention {a['attention']:.1f}); "
          f"KV cache refs+history {a['kv_fp8_gb']:.2f} GB at fp8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
