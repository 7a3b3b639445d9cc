"""What the numbers were measured on: CPU, cores, RAM, GPU/driver, library versions, git commit; memory peaks."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
import subprocess
from pathlib import Path

LIBRARIES = ("numpy", "scipy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-rtx", "torch", "torchvision",
             "cupy-cuda12x", "cupy-cuda13x", "SimpleITK", "scikit-learn", "scikit-image", "pyzmq", "msgpack",
             "spinert")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info() -> dict | None:
    """Name, memory and driver of CUDA device 0, or None without a usable GPU (never raises)."""
    from engine.backends.base import cuda_device_count

    if cuda_device_count() == 0:
        return None
    info: dict = {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            name, mem, drv = [s.strip() for s in out.stdout.splitlines()[0].split(",")]
            info.update(name=name, memory=mem, driver=drv)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info.setdefault("name", torch.cuda.get_device_name(0))
            info["cuda_runtime"] = torch.version.cuda
    except Exception:  # noqa: BLE001 - a broken torch must not stop the bench
        pass
    return info or {"name": "CUDA device (details unavailable)"}


def machine_info() -> dict:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            continue
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gb": _ram_gb(), "platform": platform.platform(),
            "python": platform.python_version(), "gpu": gpu_info(), "libraries": versions,
            "git_commit": _git_commit(Path(__file__).resolve().parents[1])}


# ------------------------------------------------------------------------------------------ memory peaks
def reset_host_peak() -> bool:
    """Reset this process's resident-memory high-water mark (Linux: /proc/self/clear_refs "5")."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_peak_mb() -> float:
    """Peak resident memory (MiB) since the last reset_host_peak (else since the process started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class GpuMemory:
    """Peak GPU memory of a block through torch.cuda / CuPy when they are imported and a GPU is used."""

    def __init__(self, on_gpu: bool) -> None:
        self.on_gpu = on_gpu
        self.peak_mb: float | None = None

    def __enter__(self) -> "GpuMemory":
        if self.on_gpu:
            try:
                import torch

                torch.cuda.reset_peak_memory_stats()
            except Exception:  # noqa: BLE001
                pass
        return self

    def __exit__(self, *exc) -> None:
        if not self.on_gpu:
            return
        peaks = []
        try:
            import torch

            peaks.append(torch.cuda.max_memory_allocated() / 2 ** 20)
        except Exception:  # noqa: BLE001
            pass
        try:
            import cupy

            peaks.append(cupy.get_default_memory_pool().total_bytes() / 2 ** 20)
        except Exception:  # noqa: BLE001
            pass
        # TensorRT / ORT-CUDA allocate outside both pools: fall back to the device's used memory.
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
            peaks.append(float(out.stdout.split()[0]))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
        self.peak_mb = round(max(peaks), 1) if peaks else None
