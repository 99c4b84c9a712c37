"""``lpm-rt compile``: checkpoint -> self-verifying artifact for one target (DESIGN section 5).

Steps (each announced on the progress stream):
    1. resolve the model (preset or model directory) and the target (arch, dtypes, page size)
    2. quantize weights offline, with a per-layer SQNR report
    3. check the quantized online step against fp32 on CPU (SQNR of velocity and video)
    4. enumerate the kernel specializations the stream settings need; compile each to a cubin
    5. export the per-chunk ONNX graphs (orin) and check them against torch with onnxruntime
    6. write weights/, kernels/, onnx/ and manifest.json (every file with its sha256)
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import lpm_rt
from lpm_rt.artifact import FORMAT, FORMAT_VERSION, QSCALE_SUFFIX, config_hash, iter_dequantized
from lpm_rt.checkpoint import PARTS, load_dir, sha256_file
from lpm_rt.config import PRESETS, preset
from lpm_rt.errors import ArtifactError
from lpm_rt.model.online import OnlineLPM

from .hostmem import release_freed
from .kernels import BuildContext, compile_variant, enumerate_variants
from .quantize import quantize_state_dict, sqnr_db
from .targets import TUNING, Target, target as get_target

__all__ = ["resolve_model", "build", "toolchain", "step_sqnr"]

STEP_CHECK_MAX_PARAMS = 200_000_000      # the CPU step check is skipped above this (too slow)


def _log(msg: str) -> None:
    print(f"[lpm-rt compile] {msg}", file=sys.stderr, flush=True)


def resolve_model(src: str) -> tuple[OnlineLPM, dict]:
    """A preset name (the shipped trained demo for "demo" when present) or a model directory."""
    from lpm_rt.loader import SHIPPED_DEMO

    if src == "demo" and (SHIPPED_DEMO / "config.json").is_file():
        model, meta = load_dir(SHIPPED_DEMO)
        return model, dict(source=f"shipped demo ({SHIPPED_DEMO})", trained=True)
    if src in PRESETS:
        return OnlineLPM(preset(src)).init_weights(0), dict(source=f"preset {src} (initial weights)", trained=False)
    if Path(src).is_dir():
        model, meta = load_dir(src)
        return model, dict(source=str(Path(src).resolve()), trained=bool(meta.get("trained", True)))
    raise ArtifactError(f"--model {src!r} is neither a preset ({', '.join(PRESETS)}) nor a model directory")


def toolchain() -> dict:
    import safetensors
    import triton

    tc = dict(lpm_rt=lpm_rt.__version__, torch=torch.__version__, triton=triton.__version__,
              safetensors=safetensors.__version__, python=platform.python_version())
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    try:
        out = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, check=True).stdout
        tc["cuda"] = out.split("release ")[1].split(",")[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        tc["cuda"] = None
    try:
        import onnx
        tc["onnx"] = onnx.__version__
    except ImportError:
        pass
    return tc


def step_sqnr(model: OnlineLPM, stored: dict, tgt: Target, chunks: int = 8, seed: int = 0) -> dict:
    """SQNR (dB) of the target's quantized online step (weights dequantized, KV pages in the
    target's dtype) against the fp32 model, on CPU, streaming what ``make demo`` streams: the
    default character's references (through the model's VAE) and the built-in conversation.

    Teacher-forced (the step's own error): every denoising pass of the quantized model gets the
    fp32 model's input latents, so each pass sees the same history latents (in its own cache,
    written by its own weights and page dtype); ``velocity_db`` pools the backbone passes,
    ``refiner_db`` the refiner's, ``video_db`` the decoded chunks. ``rollout_video_db``: the
    quantized model free-running on its own history -- how far the two streams drift apart,
    which compounds the per-step error over ``chunks`` chunks."""
    from lpm_rt.assets import builtin_conversation, default_character
    from lpm_rt.model.audio import MEL_HOP, MEL_WIN
    from lpm_rt.config import RefKind
    from lpm_rt.session import reference_latents

    cfg = model.cfg
    qcfg = cfg.replace(runtime=cfg.runtime.replace(device="cpu", dtype="fp32", kv_dtype=tgt.kv_dtype, max_sessions=1))
    qmodel = _dequantized(qcfg, stored)
    qmodel.cfg = qcfg                                 # pages in the target's KV dtype
    ref = OnlineLPM(cfg.replace(runtime=cfg.runtime.replace(device="cpu", dtype="fp32", kv_dtype="fp32",
                                                             max_sessions=1))).eval()
    ref.load_state_dict(model.state_dict())
    s, m = cfg.stream, cfg.model
    images = default_character(s.height, s.width)[:s.reference_slots]
    refs = reference_latents(ref, [r.image for r in images])
    kinds = torch.tensor([int(RefKind[r.kind.upper()]) for r in images], dtype=torch.long)
    spl = s.chunk_frames * m.vae_temporal * (s.sample_rate // s.fps)
    ctx = MEL_WIN - MEL_HOP + m.audio_context * m.vae_temporal * (s.sample_rate // s.fps)
    (spk, _), (lis, _) = builtin_conversation(chunks * spl / s.sample_rate + 0.1, seed=seed)
    spk, lis = (torch.nn.functional.pad(torch.from_numpy(x).float().reshape(1, -1)[:, :chunks * spl],
                                        (ctx, max(chunks * spl - len(x), 0))) for x in (spk, lis))
    audio = [(spk[:, i * spl:i * spl + ctx + spl], lis[:, i * spl:i * spl + ctx + spl]) for i in range(chunks)]

    def stream(net, inputs=None):
        """Video and per-pass (network, velocity); ``inputs`` (the reference's per-pass input
        latents) replace the pass inputs when given. Returns (video, passes, inputs seen)."""
        seen, passes = [], []
        plain = net._chunk_pass

        def chunk_pass(n, attn, x, sigma, context, audio_tokens):
            if inputs is not None:
                x = inputs[len(seen)]
            seen.append(x)
            v = plain(n, attn, x, sigma, context, audio_tokens)
            passes.append((n is net.refiner, v))
            return v
        net._chunk_pass = chunk_pass
        try:
            st = net.open_stream(refs, kinds, "talk", seed)
            video = torch.cat([net.step(st, *a) for a in audio], 2)
            st.close()
        finally:
            del net._chunk_pass
        return video, passes, seen

    def pooled(a, b, refiner):
        pick = lambda ps: torch.cat([v.flatten() for r, v in ps if r == refiner])   # noqa: E731
        return round(sqnr_db(pick(a), pick(b)), 2)
    v_ref, p_ref, x_ref = stream(ref)
    v_tf, p_tf, _ = stream(qmodel, x_ref)
    v_free, _, _ = stream(qmodel)
    return dict(velocity_db=pooled(p_ref, p_tf, False), refiner_db=pooled(p_ref, p_tf, True),
                video_db=round(sqnr_db(v_ref, v_tf), 2), rollout_video_db=round(sqnr_db(v_ref, v_free), 2),
                chunks=chunks, kv_dtype=tgt.kv_dtype, inputs="default character + built-in conversation")


def _dequantized(cfg, stored: dict, into: OnlineLPM | None = None) -> OnlineLPM:
    """An fp32 CPU model holding exactly the artifact's (dequantized) weights: a new one, or
    ``into`` overwritten in place, one tensor at a time (no second fp32 copy: 7.5 GB for edge-1.3b)."""
    fp32 = cfg.replace(runtime=cfg.runtime.replace(device="cpu", dtype="fp32", kv_dtype="fp32"))
    if into is None:
        m = OnlineLPM(fp32)
    else:
        m, m.cfg, m.pools = into, fp32, None
    for part in PARTS:
        have = getattr(m, part).float().state_dict()
        seen = set()
        with torch.no_grad():
            for k, t in iter_dequantized(stored[part]):
                if k not in have or have[k].shape != t.shape:
                    raise ArtifactError(f"{part}.{k}: not a parameter of this model, or of another shape")
                have[k].copy_(t)
                seen.add(k)
        if set(have) - seen:
            raise ArtifactError(f"{part}: stored weights miss {sorted(set(have) - seen)[:3]}")
    return m.eval()


def _write_file(out: Path, rel: str, data: bytes, files: dict) -> None:
    p = out / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    files[rel] = sha256_file(p)


def with_resolution(cfg, width: int, height: int):
    """``cfg`` streaming at ``width`` x ``height``. The weights do not depend on it; the page size
    is kept where it divides a latent frame's tokens, else the largest divisor of them in 16..128
    (a page is a 128-key block's worth or less, as the attention tiles want)."""
    m = cfg.model
    down = m.vae_spatial * m.patch_size[1]
    if width <= 0 or height <= 0 or width % down or height % down:
        raise ValueError(f"resolution {width}x{height} must be positive multiples of {down}")
    tpf = (height // m.vae_spatial // m.patch_size[1]) * (width // m.vae_spatial // m.patch_size[2])
    ps = cfg.stream.page_size
    if tpf % ps:
        fits = [p for p in range(min(128, tpf), 15, -1) if tpf % p == 0]
        if not fits:
            raise ValueError(f"no page size in 16..128 divides the {tpf} tokens of a {width}x{height} latent frame")
        ps = fits[0]
    return cfg.replace(stream=cfg.stream.replace(width=width, height=height, page_size=ps))


def build(src: str, target_name: str, out_dir, weights: str | None = None, step_check: bool | None = None,
          onnx: bool | None = None, log=_log, kv_dtype: str | None = None,
          resolution: tuple[int, int] | None = None) -> dict:
    """Run the pipeline; returns the manifest written to ``out_dir/manifest.json``.
    ``resolution`` (width, height): stream at that size instead of the model's (the ONNX graphs'
    static shapes and the kernels' page size follow it)."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    # 1. resolve
    tgt = get_target(target_name)
    if weights:
        tgt = tgt.with_weights(weights)
    if kv_dtype:
        tgt = tgt.with_kv(kv_dtype)
    model, origin = resolve_model(src)
    cfg = model.cfg
    if resolution is not None:
        cfg = with_resolution(cfg, *resolution)
    cfg = cfg.replace(runtime=cfg.runtime.replace(kv_dtype=tgt.kv_dtype, dtype=tgt.act_dtype))
    model.cfg = cfg
    log(f"1/6 target {tgt.name}: arch {tgt.arch}, weights {tgt.weights.value}, activations {tgt.act_dtype}, "
        f"KV pages {tgt.kv_dtype} x {cfg.stream.page_size} tokens; model {cfg.name} from {origin['source']}, "
        f"{cfg.stream.width}x{cfg.stream.height}")
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise ArtifactError(f"{out}: exists, is not empty and is not an artifact; refusing to overwrite")
    final, out = out, out.with_name(f".{out.name}.partial")     # staged: a failed build leaves no artifact
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        meta = _build_into(out, model, cfg, tgt, origin, log, step_check, onnx)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    meta["compile_seconds"] = round(time.perf_counter() - t_start, 1)
    size = sum((final / f).stat().st_size for f in meta["files"])
    log(f"6/6 wrote {final} ({len(meta['files'])} files, {size / 1e6:.2f} MB) in {meta['compile_seconds']} s")
    return meta


def _build_into(out: Path, model, cfg, tgt: Target, origin: dict, log, step_check, onnx) -> dict:
    files: dict = {}

    # 2. quantize
    stored, rows = {}, []
    for part in PARTS:
        sd = {k: v.detach() for k, v in getattr(model, part).state_dict().items()}
        stored[part], r = quantize_state_dict(sd, tgt, prefix=f"{part}.")
        rows += r
    finite = [r["sqnr_db"] for r in rows if r["sqnr_db"] is not None]
    summary = dict(layers=len(rows), min_db=round(min(finite), 2) if finite else None,
                   median_db=round(statistics.median(finite), 2) if finite else None)
    log(f"2/6 quantized {len(rows)} linears to {tgt.weights.value}: SQNR min {summary['min_db']} dB, "
        f"median {summary['median_db']} dB" if finite else f"2/6 weights stored as {tgt.weights.value} (lossless)")
    for r in sorted((r for r in rows if r["sqnr_db"] is not None), key=lambda r: r["sqnr_db"])[:3]:
        log(f"      lowest: {r['layer']} {r['shape']} {r['sqnr_db']:.2f} dB")
    for part in PARTS:
        path = out / "weights" / f"{part}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(stored[part], str(path), metadata={"format": "pt", "lpm_rt": "artifact-weights"})
        files[f"weights/{part}.safetensors"] = sha256_file(path)

    # 3. step check
    nparams = sum(p.numel() for p in model.parameters())
    if step_check is None:
        step_check = nparams <= STEP_CHECK_MAX_PARAMS
    step = None
    if step_check:
        step = step_sqnr(model, stored, tgt)
        release_freed()
        log(f"3/6 quantized online step vs fp32 (CPU, {step['chunks']} chunks, teacher-forced): backbone velocity "
            f"{step['velocity_db']} dB, refiner {step['refiner_db']} dB, video {step['video_db']} dB; free-running "
            f"video {step['rollout_video_db']} dB")
    else:
        log(f"3/6 step check skipped ({nparams / 1e6:.0f} M parameters)")

    # 4. kernels
    ctx = BuildContext(cfg, tgt, frozenset(r["format"] for r in rows))
    variants, notes = enumerate_variants(ctx)
    for note in notes:
        log(f"      note: {note}")
    kernels = []
    if variants:
        from tqdm import tqdm
        log(f"4/6 compiling {len(variants)} kernel specializations for {tgt.arch}")
        for v in tqdm(variants, desc="kernels", unit="kernel", file=sys.stderr, disable=None):
            t0 = time.perf_counter()
            cubin, rec = compile_variant(v, tgt)
            rec["file"] = f"kernels/{v.name}.cubin"
            rec["compile_s"] = round(time.perf_counter() - t0, 2)
            _write_file(out, rec["file"], cubin, files)
            kernels.append(rec)
            log(f"      {v.name}: {rec['num_warps']} warps, {rec['shared']} B shared")
    else:
        log(f"4/6 no kernels for {tgt.arch} (reference path)")

    # 5. onnx
    onnx_report = None
    if onnx if onnx is not None else tgt.onnx:
        from .onnx_export import export_all
        log("5/6 exporting ONNX graphs (opset 17, static shapes) and checking parity with onnxruntime")
        int8 = {part: {k: (v, stored[part][k + QSCALE_SUFFIX]) for k, v in stored[part].items()
                       if v.dtype == torch.int8 and k + QSCALE_SUFFIX in stored[part]}
                for part in ("backbone", "refiner")}
        # the source weights are not needed past step 3: the dequantized ones overwrite them
        onnx_report = export_all(_dequantized(cfg, stored, into=model), out / "onnx", log=log,
                                 int8_weights={k: v for k, v in int8.items() if v})
        for name, rep in onnx_report["graphs"].items():
            for f in (f"{name}.onnx", rep.get("external_data")):
                if f:
                    files[f"onnx/{f}"] = sha256_file(out / "onnx" / f)
    else:
        log("5/6 no ONNX graphs for this target")

    # 6. manifest
    cfg_dict = cfg.to_dict()
    meta = dict(format=FORMAT, format_version=FORMAT_VERSION,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                model=dict(name=cfg.name, **origin, parameters=nparams), trained=origin["trained"],
                config=cfg_dict, config_hash=config_hash(cfg_dict),
                target=dict(name=tgt.name, arch=tgt.arch, sm=tgt.sm, act_dtype=tgt.act_dtype, kv_dtype=tgt.kv_dtype,
                            page_size=cfg.stream.page_size),
                quantization=dict(format=tgt.weights.value, summary=summary, step_check=step, layers=rows),
                kernels=kernels, kernel_notes=notes, kernel_tuning=TUNING[tgt.name], onnx=onnx_report,
                toolchain=toolchain(), files=files)
    (out / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return meta
