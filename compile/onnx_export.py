"""ONNX graphs of the online model for TensorRT on Jetson Orin (opset 17, static shapes).

TensorRT has no page tables, so the streamed step takes the history as DENSE tensors. Shape
contract (N = chunk_frames * T tokens, T = tokens per latent frame, Nc = context tokens:
(reference_slots + history_frames) * T for the backbone, reference_slots * T for the refiner):

    <net>_step   (net = backbone | refiner; one denoising pass over one chunk)
      in  latents   [1, z, C, h, w] f32   the chunk's noisy latents
          timestep  [1] f32               0..1000 (= 1000 * sigma)
          text      [1, Lt, text_dim]     prompt embeddings, Lt = text_len, zero rows padded at the end
          text_valid [Lt] f32             1 for real prompt rows, 0 for padding (masked out)
          mel_speaker, mel_listener [1, (audio_context + C) * 16, n_mels]   causal log-mel (lpm_rt.model.audio.log_mel)
          k_ctx, v_ctx [layers, Nc, H, D] K (RoPE applied) / V of [references | history], oldest first,
                                          exactly what the paged cache holds
          ctx_valid [Nc] f32              1 for filled context slots, 0 for empty ones (stream start)
          rope_cos, rope_sin [N, D/2]     RoPE of the chunk's tokens (lpm_rt.model.attend.token_positions)
      out velocity  [1, z, C, h, w]       flow-matching velocity
          k_new, v_new [layers, N, H, D]  the chunk's K (RoPE applied) / V: append to the history after
                                          the last denoising pass (the noisy-history cache)
    <net>_refs   (once per session: the reference pass)
      in  ref_latents [1, z, R, h, w], ref_kinds [R] i64, ref_valid [R * T], rope_cos, rope_sin [R * T, D/2]
      out k_ref, v_ref [layers, R * T, H, D]
    vae_decode
      in  latents [1, z, C, h, w], prev [1, c, h, w] (zeros at stream start)
      out video [1, 3, 4 C, 8 h, 8 w], prev_out [1, c, h, w] (feed back as prev)

The torch wrappers below are what is exported; they reuse the model's modules and mirror
``Block.forward`` (with masks for padded text and empty context slots), and their outputs equal
the paged reference path (tests/aot/test_onnx.py). Timestep embeddings are computed in fp32
(TensorRT has no float64).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lpm_rt import ops
from lpm_rt.model.audio import LOG_MEL_SILENCE
from lpm_rt.model.dit import GuidedKV
from lpm_rt.model.rope import rope_apply

from .hostmem import release_freed

__all__ = ["ChunkStep", "RefPass", "VaeDecode", "Int8Linear", "example_inputs", "export_all", "int8_weight_dq",
           "swap_int8", "OPSET", "rel_l2"]

OPSET = 17
NEG = -30000.0          # additive mask value: exp underflows to 0, and it fits fp16 engines


def rel_l2(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _sdpa(q, k, v, bias=None):
    """q: [1, Lq, H, D], k/v: [1, Lk, H, D], bias: additive, broadcastable to [1, H, Lq, Lk]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return out.transpose(1, 2)


class _DenseNet(nn.Module):
    """Shared pieces: fp32 timestep embedding, the block loop with masked text attention."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        cfg = net.cfg
        half = cfg.freq_dim // 2
        self.register_buffer("freqs", torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half).float(),
                             persistent=False)

    def embed_time(self, t):                                      # t: [1, F] -> e [1, F, C], e0 [1, F, 6, C]
        ang = t[..., None] * self.freqs
        e = self.net.time_embedding(torch.cat([torch.cos(ang), torch.sin(ang)], -1))
        return e, self.net.time_projection(e).unflatten(-1, (6, self.net.cfg.dim))

    @staticmethod
    def block(blk, x, e, attend, context=None, text_bias=None, audio=None, guidance=None):
        """``lpm_rt.model.dit.Block.forward`` with a key mask on the text cross-attention;
        ``guidance`` = (silent audio windows, gain): the stream's audio guidance (``GuidedKV``)."""
        B, N, C = x.shape
        Fr = e.shape[1]
        T = N // Fr
        mod = (blk.modulation.unsqueeze(0).float() + e.float()).unsqueeze(2)      # (B, F, 1, 6, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(3)

        def modulate(h, shift, scale):
            return ops.norm_modulate(h.view(B * Fr, T, C), shift.reshape(B * Fr, 1, C),
                                     scale.reshape(B * Fr, 1, C), blk.eps).view(B, N, C)

        def gated(y, gate):
            return (y.view(B, Fr, T, C) * gate).view(B, N, C)

        q, k, v = blk.self_attn.qkv(modulate(x, shift1, scale1))
        x = x + gated(blk.self_attn.o(attend(q, k, v).flatten(2)), gate1)
        if context is not None:
            q, k, v = blk.cross_attn.qkv(blk.norm3(x), context)
            x = x + blk.cross_attn.o(_sdpa(q, k, v, text_bias).flatten(2))
        if audio is not None:
            h = blk.norm_audio(x).view(B * Fr, T, C)
            a = audio.flatten(0, 1)
            if guidance is not None and guidance[1] != 1.0:
                att = blk.audio_attn
                a = GuidedKV(att.raw_kv(a), att.raw_kv(guidance[0].flatten(0, 1)), guidance[1])
            x = x + blk.audio_attn.cross(h, a).view(B, N, C)
        return x + gated(blk.ffn(modulate(x, shift2, scale2)), gate2)

    def unpatchify(self, x, frames, h, w):                        # [1, F*h*w, patch_dim] -> [1, z, F, H, W]
        pt, ph, pw = self.net.cfg.patch_size
        z = self.net.cfg.out_dim
        x = x.view(1, frames, h, w, pt, ph, pw, z).permute(0, 7, 1, 4, 2, 5, 3, 6)   # (1, z, F, pt, h, ph, w, pw)
        return x.reshape(1, z, frames * pt, h * ph, w * pw)


class ChunkStep(_DenseNet):
    """One denoising pass of ``net`` over a chunk with dense [refs | history] K/V (see module doc).
    ``guidance`` = (speaker, listener) gains of the stream's audio guidance (``StreamConfig``),
    baked into the graph with silence's log-mel as a constant."""

    def __init__(self, net, guidance=(1.0, 1.0)):
        super().__init__(net)
        self.guidance = tuple(float(g) for g in guidance)

    def forward(self, latents, timestep, text, text_valid, mel_speaker, mel_listener,
                k_ctx, v_ctx, ctx_valid, rope_cos, rope_sin):
        net = self.net
        _, _, Fr, Hl, Wl = latents.shape
        h, w = Hl // net.cfg.patch_size[1], Wl // net.cfg.patch_size[2]
        x = net.embed_patches(latents)                                           # (1, N, C)
        N = x.shape[1]
        e, e0 = self.embed_time(timestep.reshape(1, 1).expand(1, Fr))
        context = net.embed_text(text)
        text_bias = ((1.0 - text_valid) * NEG).view(1, 1, 1, -1)
        audio = net.encode_audio_tracks((mel_speaker, mel_listener))
        null = None
        if self.guidance != (1.0, 1.0):
            null = net.encode_audio_tracks((torch.full_like(mel_speaker, LOG_MEL_SILENCE),) * 2)
        kv_bias = torch.cat([(1.0 - ctx_valid) * NEG, ctx_valid.new_zeros(N)]).view(1, 1, 1, -1)
        k_new, v_new = [], []
        for i, blk in enumerate(net.blocks):
            def attend(q, k, v, i=i):
                q, k = rope_apply(q, rope_cos, rope_sin), rope_apply(k, rope_cos, rope_sin)
                k_new.append(k[0])
                v_new.append(v[0])
                kk = torch.cat([k_ctx[i].unsqueeze(0), k], 1)                     # (1, Nc + N, H, D)
                vv = torch.cat([v_ctx[i].unsqueeze(0), v], 1)
                return _sdpa(q, kk, vv, kv_bias)
            g = None if null is None else (null[i % 2], self.guidance[i % 2])
            x = self.block(blk, x, e0, attend, context, text_bias, audio[i % 2], g)
        out = net.head(x, e)
        return self.unpatchify(out, Fr, h, w), torch.stack(k_new), torch.stack(v_new)


class RefPass(_DenseNet):
    """The reference pass (t = 0, references attend among themselves): their K/V for the context."""

    def forward(self, ref_latents, ref_kinds, ref_valid, rope_cos, rope_sin):
        net = self.net
        r = net.embed_refs(ref_latents, ref_kinds)
        _, e0 = self.embed_time(torch.zeros(1, 1, device=r.device))
        bias = ((1.0 - ref_valid) * NEG).view(1, 1, 1, -1)
        ks, vs = [], []
        for blk in net.blocks:
            def attend(q, k, v):
                q, k = rope_apply(q, rope_cos, rope_sin), rope_apply(k, rope_cos, rope_sin)
                ks.append(k[0])
                vs.append(v[0])
                return _sdpa(q, k, v, bias)
            r = self.block(blk, r, e0, attend)
        return torch.stack(ks), torch.stack(vs)


class VaeDecode(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents, prev):
        from lpm_rt.model.vae import DecoderCache
        cache = DecoderCache()
        cache.prev = prev
        video = self.vae.decode(latents, cache)
        return video, cache.prev


def example_inputs(cfg, kind: str, net: str = "backbone", seed: int = 0) -> dict:
    """Random inputs with the static shapes of the contract (ordered as the graph's inputs)."""
    from lpm_rt.model.attend import token_positions
    m, s = cfg.model, cfg.stream
    g = torch.Generator().manual_seed(seed)
    T, C, R = s.tokens_per_frame, s.chunk_frames, s.reference_slots
    h, w = s.latent_h // m.patch_size[1], s.latent_w // m.patch_size[2]
    layers = m.num_layers if net == "backbone" else m.refiner_layers
    lat = lambda f: torch.randn(1, m.vae_z_dim, f, s.latent_h, s.latent_w, generator=g)   # noqa: E731
    if kind == "vae":
        return dict(latents=lat(C), prev=torch.zeros(1, m.vae_channels[-1], s.latent_h, s.latent_w))
    if kind == "refs":
        cos, sin = token_positions(s.ref_time_index - torch.arange(R), h, w, m.rope_dims, m.rope_theta)
        return dict(ref_latents=lat(R), ref_kinds=torch.arange(R) % m.num_ref_kinds,
                    ref_valid=torch.ones(R * T), rope_cos=cos, rope_sin=sin)
    nc = (R + (s.history_frames if net == "backbone" else 0)) * T
    nmel = (m.audio_context + C) * 16
    valid = torch.ones(nc)
    valid[R * T - T:R * T] = 0                            # one empty reference slot: exercises the mask
    text_valid = torch.ones(m.text_len)
    text_valid[m.text_len // 2:] = 0
    cos, sin = token_positions(torch.arange(C) + s.history_frames, h, w, m.rope_dims, m.rope_theta)
    return dict(latents=lat(C), timestep=torch.tensor([1000.0 * s.sigmas[0]]),
                text=torch.randn(1, m.text_len, m.text_dim, generator=g) * text_valid[None, :, None],
                text_valid=text_valid,
                mel_speaker=torch.randn(1, nmel, m.n_mels, generator=g) - 5,
                mel_listener=torch.randn(1, nmel, m.n_mels, generator=g) - 5,
                k_ctx=torch.randn(layers, nc, m.num_heads, m.head_dim, generator=g),
                v_ctx=torch.randn(layers, nc, m.num_heads, m.head_dim, generator=g),
                ctx_valid=valid, rope_cos=cos, rope_sin=sin)


_OUTPUTS = dict(step=["velocity", "k_new", "v_new"], refs=["k_ref", "v_ref"], vae=["video", "prev_out"])


PROTO_LIMIT = 2 ** 31 - 1      # protobuf's message limit: larger graphs keep their tensors in <graph>.onnx.data


def _export_one(module, inputs: dict, outputs: list, path: Path, int8: bool = False) -> dict:
    """Export, rewrite the INT8 weights' dequantization as DequantizeLinear, save (one external
    data file when past 2 GB), check. ``int8``: the module holds :class:`Int8Linear` layers, whose
    Cast + Mul constant folding would turn back into fp32 initializers: folding stays off."""
    import shutil

    import onnx
    import onnxruntime as ort

    module = module.eval()
    args = tuple(inputs.values())
    stage = path.parent / f".{path.stem}.export"     # the exporter may write one file per tensor here
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        with torch.no_grad():
            want = module(*args)
            torch.onnx.export(module, args, str(stage / path.name), input_names=list(inputs), output_names=outputs,
                              opset_version=OPSET, dynamo=False, do_constant_folding=not int8)
        model = onnx.load(str(stage / path.name))
        qdq = int8_weight_dq(model) if int8 else None
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        external = model.ByteSize() > PROTO_LIMIT
        onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                  location=data.name)
        del model
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    release_freed()
    onnx.checker.check_model(str(path), full_check=True)          # by path: graphs past 2 GB too
    opts = ort.SessionOptions()
    # free each tensor when it dies instead of keeping planned arena blocks: at 480P the explicit
    # attention's scores are GBs per tensor (peak 18.1 -> 17.1 GB with 2 of edge-1.3b's layers)
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if qdq:
        # onnxruntime's CPU optimizer turns DQ(weight) -> MatMul into an integer MatMul that also
        # quantizes the activations (rel L2 ~6e-3 on tiny): check the graph's own semantics here;
        # the INT8 kernels are TensorRT's, built on the device
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fed = {i.name: inputs[i.name].numpy() for i in sess.get_inputs()}
    got = sess.run(outputs, fed)
    del sess
    release_freed()
    return dict(inputs={k: list(v.shape) for k, v in inputs.items()},
                outputs={n: list(g.shape) for n, g in zip(outputs, got)},
                parity_rel_l2={n: float(f"{rel_l2(g, w_):.3e}") for n, g, w_ in zip(outputs, got, want)},
                bytes=path.stat().st_size + (data.stat().st_size if external else 0),
                **({"external_data": data.name} if external else {}), **({"int8_weight_dq": qdq} if qdq else {}))


class Int8Linear(nn.Module):
    """A linear layer exported as INT8 weight-only: the graph holds the int8 weight and its
    per-output-channel scale and dequantizes them itself (W = q * scale, in fp32), so no fp32
    copy of the weight exists in the export or in memory (edge-1.3b: 1.9 GB of int8 weights
    instead of 7.5 GB of fp32). :func:`int8_weight_dq` turns that Cast + Mul into DequantizeLinear."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("q", q.to(torch.int8))
        self.register_buffer("scale", scale.float()[:, None])
        self.bias = bias

    def forward(self, x):
        return F.linear(x, self.q.float() * self.scale, self.bias)


def swap_int8(net: nn.Module, weights: dict) -> int:
    """Replace the ``nn.Linear`` layers of ``net`` named in ``weights`` ({"<module>.weight": (q
    int8 [N, K], scale [N])}, as the artifact stores them) by :class:`Int8Linear`, in place;
    their fp32 weights are dropped. Returns how many were replaced."""
    n = 0
    for key, (q, scale) in weights.items():
        path = key.removesuffix(".weight")
        lin = net.get_submodule(path)
        if not isinstance(lin, nn.Linear) or tuple(lin.weight.shape) != tuple(q.shape) or scale.dim() != 1:
            raise ValueError(f"{key}: not a per-channel int8 weight of a linear layer")
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, Int8Linear(q, scale, lin.bias))
        n += 1
    return n


def int8_weight_dq(model) -> dict:
    """Rewrite an exported graph (onnx ModelProto, in place) for TensorRT's INT8 weight-only
    GEMMs: each ``Cast(int8 initializer) -> Mul(fp32 [N, 1] initializer)`` that an
    :class:`Int8Linear` exports becomes ``DequantizeLinear(q, scale [N], 0, axis=0)`` with the
    same output -- the same values (q * scale in fp32), in the form TensorRT folds into INT8
    GEMMs on Orin. Returns {"replaced": distinct weights, "nodes": rewritten dequantizations}."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    users: dict = {}
    for node in g.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    drop, new_nodes, weights, scales = set(), {}, set(), {}
    for i, node in enumerate(g.node):
        if node.op_type != "Cast" or node.input[0] not in inits or inits[node.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        mul = users.get(node.output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul":
            continue
        mul = mul[0]
        sname = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        q = inits[node.input[0]]
        if sname not in inits or tuple(inits[sname].dims) != (q.dims[0], 1):
            continue
        if sname not in scales:                     # [N, 1] -> [N], and a zero point, once per weight
            flat = numpy_helper.to_array(inits[sname]).reshape(-1).astype(np.float32)
            scales[sname] = (numpy_helper.from_array(flat, sname + "_axis0"),
                             numpy_helper.from_array(np.zeros(q.dims[0], np.int8), node.input[0] + "_zero"))
        weights.add(node.input[0])
        drop.update((id(node), id(mul)))
        new_nodes[i] = helper.make_node("DequantizeLinear", [node.input[0], sname + "_axis0", node.input[0] + "_zero"],
                                        [mul.output[0]], name=mul.output[0] + "_dq", axis=0)
    if not new_nodes:
        return dict(replaced=0, nodes=0)
    nodes = []
    for i, node in enumerate(g.node):               # each DQ where its Cast was: still topologically sorted
        if i in new_nodes:
            nodes.append(new_nodes[i])
        elif id(node) not in drop:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    keep = [init for init in g.initializer if init.name not in scales]
    del g.initializer[:]
    g.initializer.extend(keep + [t for pair in scales.values() for t in pair])
    return dict(replaced=len(weights), nodes=len(new_nodes))


def export_all(model, out_dir, log=lambda m: None, int8_weights: dict | None = None) -> dict:
    """Export every graph of ``model`` (an OnlineLPM, fp32 on CPU) to ``out_dir`` and check it:
    onnx.checker (full check) and onnxruntime vs torch (relative L2 per output).
    ``int8_weights`` (net -> {name: (q, scale)}): those nets' linears become :class:`Int8Linear`
    (in place: ``model`` is spent for fp32 use) and their graphs carry INT8 weight-only Q/DQ
    (:func:`int8_weight_dq`); torch and onnxruntime then compute with the same dequantized
    weights. Past 2 GB a graph keeps its tensors in ``<graph>.onnx.data``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    prev = ops.get_backend()
    ops.set_backend("ref")
    graphs = {}
    try:
        for net in ("backbone", "refiner"):
            dit = getattr(model, net).float().eval()
            w8 = bool(swap_int8(dit, (int8_weights or {}).get(net) or {}))
            release_freed()                                   # the replaced fp32 weights
            guidance = (cfg.stream.speaker_guidance, cfg.stream.listener_guidance) if net == "backbone" else (1.0, 1.0)
            graphs[f"{net}_step"] = _export_one(ChunkStep(dit, guidance), example_inputs(cfg, "step", net), _OUTPUTS["step"],
                                                out / f"{net}_step.onnx", w8)
            graphs[f"{net}_refs"] = _export_one(RefPass(dit), example_inputs(cfg, "refs", net), _OUTPUTS["refs"],
                                                out / f"{net}_refs.onnx", w8)
        graphs["vae_decode"] = _export_one(VaeDecode(model.vae.float().eval()), example_inputs(cfg, "vae"),
                                           _OUTPUTS["vae"], out / "vae_decode.onnx")
    finally:
        ops.set_backend(prev)
    for name, r in graphs.items():
        worst = max(r["parity_rel_l2"].values())
        q = r.get("int8_weight_dq")
        note = f", {q['replaced']} weights INT8 Q/DQ" if q else ""
        log(f"      {name}.onnx: {r['bytes'] / 1e6:.2f} MB{note}, onnxruntime vs torch rel L2 max {worst:.1e}")
    worst = max(max(r["parity_rel_l2"].values()) for r in graphs.values())
    if not math.isfinite(worst) or worst > 1e-3:
        raise RuntimeError(f"ONNX parity failed: relative L2 {worst:.2e} > 1e-3")
    return dict(opset=OPSET, graphs=graphs)
