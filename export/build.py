"""ONNX -> TensorRT engine, one path for `tensorrt` and `tensorrt_rtx`, driven by Polygraphy.

Polygraphy's loaders do the builder plumbing: NetworkFromOnnxPath (strongly typed), CreateConfig /
CreateConfigRTX (profiles, compute-capability targets), EngineBytesFromNetwork (build + timing cache).

Precision comes from the ONNX file, not from builder flags: the networks are strongly typed, so an FP16
ONNX (fp16 weights and compute, float32 I/O) gives an FP16 engine and a Q/DQ ONNX an INT8 one. TensorRT for
RTX has no precision flags at all (Polygraphy refuses them with USE_TENSORRT_RTX=1), and TensorRT 10
deprecates them in favour of strong typing, so both flavours take the same path.

Timing cache: used with `tensorrt` (saved beside the engines, reused by later builds). TensorRT for RTX
documents that a timing cache has no effect on its engines and forces the ahead-of-time step to query a GPU
(it would break CPU-only builds), so none is used there; its runtime cache (JIT kernels) lives in the
runtime backend instead.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.errors import BackendError, ModelError
from engine.models import ModelSpec, sha256_file
from export import flavour as fl
from export import manifest as mf
from export.gpu import gpu_info
from export.onnxprep import prepare

TIMING_CACHE = "timing.cache"


def _np_dtype(trt, dt) -> str:
    return np.dtype(trt.nptype(dt)).name


def parse_cc(items: str | None, flavour: fl.Flavour) -> list[str] | None:
    """--cc value -> ["8.6", "8.9"]; None = "auto" (the present GPU, else every target the library knows)."""
    if items is None or items == "auto":
        return None
    known = supported_cc(flavour)
    if items == "all":
        return known
    out = []
    for it in items.split(","):
        it = it.strip()
        if it not in known:
            raise BackendError(f"compute capability {it!r} is not a {flavour.name} {flavour.version} target "
                               f"(known: {', '.join(known) or 'none: full TensorRT builds for the GPU present'})")
        out.append(it)
    return out


def supported_cc(flavour: fl.Flavour) -> list[str]:
    """Compute capabilities TensorRT for RTX can target (its ComputeCapability enum: SM75, SM80, SM86...)."""
    cc_enum = getattr(flavour.module, "ComputeCapability", None)
    if not flavour.is_rtx or cc_enum is None:
        return []
    names = [n for n in dir(cc_enum) if n.startswith("SM") and n[2:].isdigit()]
    return [f"{n[2:-1]}.{n[-1]}" for n in sorted(names, key=lambda n: int(n[2:]))]


def resolve_targets(flavour: fl.Flavour, cc: list[str] | None) -> list[str]:
    gpu = gpu_info()
    if not flavour.is_rtx:
        if gpu is None:
            raise BackendError("full TensorRT builds engines for the GPU it runs on and there is no CUDA GPU here "
                               "(use --target rtx: TensorRT for RTX builds on a CPU-only machine)")
        if cc and cc != [gpu.cc]:
            raise BackendError(f"full TensorRT builds only for the GPU present (cc {gpu.cc}), not {cc}")
        return [gpu.cc]
    if cc:
        return cc
    known = supported_cc(flavour)
    if gpu is not None:
        if gpu.cc not in known:
            raise BackendError(f"{flavour.name} {flavour.version} cannot target this GPU ({gpu.name}, compute "
                               f"capability {gpu.cc}); it supports {', '.join(known)}")
        return [gpu.cc]
    return known


@contextmanager
def _builder_log(into: list[str]) -> Iterator[None]:
    """Collect Polygraphy's and TensorRT's error messages into ``into`` instead of printing them.

    A failed build otherwise leaves a screen of parser/builder lines and a generic "Invalid Engine"; the
    messages are routed through Python logging (Polygraphy's use_python_logging_system) while building.
    """
    from polygraphy.logger import G_LOGGER

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                into.append(record.getMessage())

    logger = logging.getLogger("Polygraphy")
    handler, propagate, old = Collect(), logger.propagate, G_LOGGER.use_python_logging_system
    logger.addHandler(handler)
    logger.propagate = False
    G_LOGGER.use_python_logging_system = True
    try:
        yield
    finally:
        G_LOGGER.use_python_logging_system = old
        logger.removeHandler(handler)
        logger.propagate = propagate


def build_failure(flavour: fl.Flavour, name: str, precision: str, targets: list[str], log: list[str],
                  exc: Exception) -> str:
    """One line: the builder's first real error (not its follow-ups or CUDA-driver noise) and a hint."""
    reason = ""
    for msg in log:
        m = re.search(r"Error Code \d+: [^(]*\((.*)\)", msg, flags=re.S)
        if m and "catchCudaError" not in msg and "CUDA driver version" not in msg:
            reason = re.sub(r"\s+In \w+ at \S+$", "", m.group(1).strip())
            reason = re.sub(r"^\[[^\]]*\]\s*", "", re.sub(r"\s+", " ", reason))
            break
    reason = reason or str(exc).strip().splitlines()[-1]
    line = f"{flavour.name} could not build {name} {precision}: {reason[:300]}"
    if flavour.is_rtx and ("SM75" in reason or "Turing" in reason) and "7.5" in targets:
        # Seen with TensorRT for RTX 1.7: on Turing even Q/DQ-wrapped convolutions and GEMMs are compiled
        # in FP32 (no INT8 kernels there), and FP32 3-D convolution / GEMM is not supported on Turing.
        others = ",".join(c for c in targets if c != "7.5") or "8.0,8.6,8.9,12.0"
        line += (f" (TensorRT for RTX builds no {precision.upper()} path for Turing (cc 7.5): target newer GPUs, "
                 f"e.g. --cc {others}" + (", or use --precision fp16)" if precision != "fp16" else ")"))
    return line


def build_engine(spec: ModelSpec, precision: str, flavour: fl.Flavour, out_dir: str | Path,
                 batch: tuple[int, int, int], cc: list[str] | None = None, parity: bool = True) -> mf.EngineManifest:
    """Build ``spec``'s ``precision`` model into ``out_dir``; writes the engine, its manifest and the slim ONNX."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        source = spec.path(precision)
    except ModelError:
        if precision == "int8":
            raise ModelError(f"model {spec.name!r} has no INT8 (Q/DQ) ONNX in the manifest: run `spinert calibrate` "
                             f"first") from None
        raise
    if not source.is_file():
        raise ModelError(f"model file missing: {source}")
    source_sha = sha256_file(source)
    want = spec.sha256.get(precision)
    if want and want != source_sha:
        raise ModelError(f"model file {source} does not match its manifest (sha256 {source_sha[:12]}... != "
                         f"{want[:12]}...): the models folder is inconsistent")
    targets = resolve_targets(flavour, cc)
    from export.profiles import profiles_for

    profiles = profiles_for(spec.name, spec.inputs, batch)
    stem = mf.engine_stem(spec.name, precision, flavour.short)
    slim_path = out_dir / f"{spec.name}.{precision}.slim.onnx"
    prep = prepare(source, slim_path)

    fl.polygraphy_for(flavour)
    import polygraphy
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    trt = flavour.module
    t0 = time.perf_counter()
    log: list[str] = []
    try:
        with _builder_log(log):  # the builder's own error messages, for a one-line reason
            builder, network, parser = NetworkFromOnnxPath(str(slim_path), strongly_typed=True)()
            io = [mf.TensorBinding(t.name, mode, [int(d) for d in t.shape], _np_dtype(trt, t.dtype))
                  for mode, tensors in (("input", [network.get_input(i) for i in range(network.num_inputs)]),
                                        ("output", [network.get_output(i) for i in range(network.num_outputs)]))
                  for t in tensors]
            missing = set(profiles) - {b.name for b in io if b.mode == "input"}
            if missing:
                raise ModelError(f"{source}: the manifest's inputs {sorted(missing)} are not inputs of the ONNX graph")
            prof = Profile()
            for name, p in profiles.items():
                prof.add(name, min=p["min"], opt=p["opt"], max=p["max"])
            timing_note, save_cache = "", None
            if flavour.is_rtx:
                from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

                config = CreateConfigRTX(profiles=[prof], compute_capabilities=[tuple(int(x) for x in c.split("."))
                                                                                for c in targets])
                timing_note = "not used: TensorRT for RTX ignores it and it would need a GPU at build time"
            else:
                cache = out_dir / TIMING_CACHE
                config = CreateConfig(profiles=[prof], load_timing_cache=str(cache) if cache.is_file() else None)
                save_cache, timing_note = str(cache), str(cache)
            ser = EngineBytesFromNetwork((builder, network, parser), config=config, save_timing_cache=save_cache)()
    except PolygraphyException as exc:
        raise ModelError(build_failure(flavour, spec.name, precision, targets, log, exc)) from None
    seconds = time.perf_counter() - t0
    data = memoryview(ser).cast("B")
    engine = out_dir / f"{stem}.engine"
    tmp = engine.with_suffix(".engine.tmp")
    tmp.write_bytes(data)
    tmp.replace(engine)
    gpu = gpu_info()
    m = mf.EngineManifest(
        model=spec.name, precision=precision, flavour=flavour.name, trt_version=flavour.version,
        engine_file=engine.name, engine_sha256=sha256_file(engine), engine_bytes=engine.stat().st_size,
        source_file=str(source.resolve()), source_sha256=source_sha, slim_onnx_file=slim_path.name,
        slim_onnx_sha256=sha256_file(slim_path), opset=prep.opset, target_cc=targets,
        gpu={"name": gpu.name, "cc": gpu.cc} if gpu else None, strongly_typed=True, profiles=profiles, io=io,
        build_seconds=round(seconds, 3), built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        builder=f"polygraphy {polygraphy.__version__}", timing_cache=timing_note,
        parity="not measured: parity is measured after the build",
        onnx_parser_version=str(getattr(trt, "get_nv_onnx_parser_version", lambda: "")()),
        extra={"simplify": prep.note, "model_version": spec.version})
    mf.write(m, engine)
    if parity:
        m.parity = measure_parity(spec, precision, engine, m)
        mf.write(m, engine)
    return m


def measure_parity(spec: ModelSpec, precision: str, engine: Path, m: mf.EngineManifest,
                   batch: int = 2, seed: int = 0) -> dict[str, Any] | str:
    """Engine vs the FP32 ONNX on ONNX Runtime (CPU), same random input; a reason string where no GPU can run it."""
    from engine.backends import tensorrt as trt_backend

    why = trt_backend.why_not_runnable(m)
    if why:
        return f"not measured: {why}"
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    feeds = {b.name: rng.random([min(batch, m.max_batch), *b.shape[1:]], dtype=np.float32).astype(b.dtype)
             for b in m.io if b.mode == "input"}
    ref_sess = ort.InferenceSession(str(spec.path("fp32")), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in ref_sess.get_outputs()], ref_sess.run(None, feeds)))
    sess = trt_backend.TrtSession.from_engine(engine, m, precision=precision)
    try:
        got = sess.run(feeds)
    finally:
        sess.close()
    out: dict[str, Any] = {"reference": "fp32 ONNX on onnxruntime CPU", "input": f"uniform [0,1) batch {batch}",
                           "seed": seed}
    for k, r in ref.items():
        d = np.abs(np.asarray(got[k], np.float64) - r)
        out[k] = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
    return out
