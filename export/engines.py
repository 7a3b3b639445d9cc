"""Engine freshness: is the engine on disk still the one this model, this TensorRT and this GPU need?

An engine is stale when its model file changed (sha256: retraining), the installed TensorRT flavour or
version differs (engines are not portable across versions), the engine file itself changed, or the GPU
present is not one it was built for (compute capability). ``ensure_engine`` is what the runtime calls:
the path of a fresh engine, or a rebuild when asked, or a StaleEngineError naming the command.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import BackendError, ModelError, StaleEngineError
from engine.models import ModelSpec, default_models_dir, sha256_file
from export import flavour as fl
from export import manifest as mf
from export.gpu import gpu_info


def default_engine_dir() -> Path:
    """$SPINERT_ENGINES, else ~/.cache/spinert/engines (engines belong to a machine, not to the package)."""
    from spinert.paths import user_cache_dir

    return user_cache_dir("engines", "SPINERT_ENGINES")


@dataclass
class EngineStatus:
    model: str
    precision: str
    flavour: str
    path: Path
    state: str                       # "fresh" | "stale" | "missing"
    reasons: list[str] = field(default_factory=list)
    manifest: mf.EngineManifest | None = None

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"

    def line(self) -> str:
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.state:7s} {self.model} {self.precision} {self.flavour} ({self.path}){why}"


def rebuild_command(precision: str, flavour: str, out_dir: Path | None, models_dir: Path | None,
                    model: str | None = None) -> str:
    cmd = f"spinert export --precision {precision} --target {fl.SHORT[flavour]}"
    if model:
        cmd += f" --model {model}"
    if models_dir is not None and Path(models_dir).resolve() != default_models_dir().resolve():
        cmd += f" --models {models_dir}"
    if out_dir is not None and Path(out_dir).resolve() != default_engine_dir().resolve():
        cmd += f" --out {out_dir}"
    return cmd


def check_engine(spec: ModelSpec, precision: str, flavour: str, out_dir: str | Path | None = None,
                 runtime_check: bool = True) -> EngineStatus:
    """Fresh/stale/missing with every reason found (not only the first)."""
    flavour = fl.canonical(flavour)
    out_dir = Path(out_dir) if out_dir is not None else default_engine_dir()
    path = mf.engine_path(out_dir, spec.name, precision, fl.SHORT[flavour])
    st = EngineStatus(spec.name, precision, flavour, path, "missing")
    if not path.is_file():
        st.reasons.append("no engine built")
        return st
    try:
        m = mf.read(path)
    except ModelError as exc:
        st.state = "stale"
        st.reasons.append(str(exc))
        return st
    st.manifest = m
    reasons = st.reasons
    try:
        source = spec.path(precision)
    except ModelError as exc:
        reasons.append(str(exc))
        source = None
    if source is not None:
        if not source.is_file():
            reasons.append(f"model file missing: {source}")
        else:
            sha = sha256_file(source)
            if sha != m.source_sha256:
                reasons.append(f"model changed: {source.name} sha256 {sha[:12]} != {m.source_sha256[:12]} at build")
    if m.flavour != flavour or m.model != spec.name or m.precision != precision:
        reasons.append(f"manifest is for {m.model} {m.precision} {m.flavour}")
    try:
        f = fl.load(flavour)
    except BackendError as exc:
        reasons.append(str(exc))
        f = None
    if f is not None and f.version != m.trt_version:
        reasons.append(f"{flavour} version {f.version} installed, engine built with {m.trt_version}")
    if path.stat().st_size != m.engine_bytes or sha256_file(path) != m.engine_sha256:
        reasons.append("engine file does not match its manifest (sha256)")
    gpu = gpu_info()
    if gpu is not None and gpu.cc not in m.target_cc:
        reasons.append(f"GPU {gpu.name} (compute capability {gpu.cc}) is not a target of this engine "
                       f"({', '.join(m.target_cc)})")
    if not reasons and gpu is not None and f is not None and runtime_check:
        why = header_validity(f, path)
        if why:
            reasons.append(why)
    st.state = "stale" if reasons else "fresh"
    return st


def header_validity(f: fl.Flavour, path: Path) -> str | None:
    """TensorRT for RTX's own header check (IRuntime.get_engine_validity, needs a GPU); None if it says valid."""
    trt = f.module
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    if not hasattr(runtime, "get_engine_validity"):
        return None
    n = int(getattr(runtime, "engine_header_size", 0) or 0)
    with open(path, "rb") as fh:
        head = fh.read(n) if n else fh.read()
    validity, diag = runtime.get_engine_validity(head)
    if validity == trt.EngineValidity.INVALID:
        flags = [d for d in dir(trt.EngineInvalidityDiagnostics) if d.isupper()
                 and int(diag) & int(getattr(trt.EngineInvalidityDiagnostics, d))]
        return f"{f.name} reports the engine invalid here ({', '.join(flags) or 'no diagnostics'})"
    return None


def ensure_engine(spec: ModelSpec, precision: str = "fp16", rebuild: bool = False, flavour: str | None = None,
                  out_dir: str | Path | None = None, batch: tuple[int, int, int] | None = None) -> Path:
    """The path of a fresh engine for ``spec`` at ``precision``.

    A missing or stale engine is rebuilt when ``rebuild`` is true; otherwise StaleEngineError (stale) or
    BackendError (missing) says why and names the `spinert export` command that fixes it.
    """
    from export.profiles import batch_for

    flavour = fl.canonical(flavour) if flavour else fl.default_target(gpu_info() is not None)
    out = Path(out_dir) if out_dir is not None else default_engine_dir()
    st = check_engine(spec, precision, flavour, out)
    if st.fresh:
        return st.path
    cmd = rebuild_command(precision, flavour, out, spec.root, spec.name)
    if not rebuild:
        what = f"{spec.name} {precision} engine ({flavour})"
        if st.state == "missing":
            raise BackendError(f"no {what} in {out}: build it with `{cmd}` (or pass --rebuild)")
        raise StaleEngineError(f"{what} is stale ({'; '.join(st.reasons)}): rebuild it with `{cmd}` "
                               f"(or pass --rebuild)")
    from export.build import build_engine

    build_engine(spec, precision, fl.load(flavour), out, batch or batch_for(spec.name))
    st = check_engine(spec, precision, flavour, out)
    if not st.fresh:
        raise StaleEngineError(f"rebuilt {spec.name} {precision} engine is still stale: {'; '.join(st.reasons)}")
    return st.path
