"""`spinert bench`: a real --quick run on a small CT (real onnxruntime sessions, real ZeroMQ sockets), the
report's required keys, markdown and PNGs, --compare ratios, and one-line errors for bad input.
No timing is asserted."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.runner import parse_sizes, pct
from engine.errors import InputError
from engine.pipeline import STAGES



def _spinert(*args: str) -> subprocess.CompletedProcess:
    # A hang guard, not a timing check: a quick bench took over 120 s on 2 cores shared with a training run.
    return subprocess.run([sys.executable, "-m", "spinert", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """The shipped sample CT cut to 20 sagittal slices: every stage and micro-benchmark runs, quickly."""
    from engine.io import read_volume, write_volume
    from spinert import asset_path

    v = read_volume(asset_path("data/sample_ct.nii.gz"))
    mid = v.array.shape[2] // 2
    out = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    write_volume(replace(v, array=np.ascontiguousarray(v.array[:, :, mid - 10:mid + 10]), name="small"), out)
    return out


@pytest.fixture(scope="module")
def quick_run(small_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = _spinert("bench", "--quick", "--runs", "1", "--warmup", "0", "--ct", str(small_ct),
                 "--json", str(out / "r.json"), "--plot", str(out / "plots"))
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r


def test_quick_report_has_required_keys(quick_run):
    out, r = quick_run
    rep = json.loads((out / "r.json").read_text())
    for q in ("p50", "p95", "p99", "max"):
        assert rep["end_to_end_ms"][q] > 0
    assert set(rep["stages"]) == set(STAGES)
    for s in STAGES:
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(rep["stages"][s])
    assert rep["stages"]["detect"]["p50_ms"] > 0
    d = rep["dbscan"]
    assert d["identical"] is True and d["speedup_vs_sklearn"] > 0
    m = rep["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["libraries"]["onnxruntime"]
    from engine.backends.base import cuda_device_count

    if cuda_device_count() == 0:  # honest CPU report: no GPU, no GPU memory
        assert m["gpu"] is None
        assert all(c["peak_gpu_mb"] is None for c in rep["matrix"])
    # The shipped placeholders are untrained and the report must say so.
    from engine.models import MODEL_NAMES, load_manifest

    specs = load_manifest(None)
    assert rep["models_trained"] == all(specs[n].is_trained for n in MODEL_NAMES)
    if not rep["models_trained"]:
        assert "untrained" in rep["models_note"]
        assert "untrained placeholders" in (out / "r.md").read_text()
    cell = rep["matrix"][0]
    assert cell["backend"] == "onnxruntime" and cell["precision"] == "fp32" and cell["ct"] == "small_ct.nii.gz"
    assert cell["slices"] > 0 and cell["peak_host_mb"] > 0 and cell["throughput"]["cts_per_s"] > 0
    # GPU backends cannot run here: skipped with a reason, not silently dropped.
    if cuda_device_count() == 0:
        assert "no CUDA GPU" in rep["skipped"]["tensorrt/fp32"]
    b = rep["naive_baseline"]
    assert b["naive_all_slices"]["slices"] == 20 and b["detect_speedup"] > 0 and b["end_to_end_speedup"] > 0
    ms = rep["model_sessions"]["onnxruntime/fp32"]
    assert ms["segmenter"]["input_shape"] == [1, 2, 128, 128, 128] and ms["segmenter"]["ms_per_roi"] > 0
    assert ms["labeller"]["ms_per_vertebra"] > 0 and ms["detector"]["ms_per_slice"] > 0
    assert rep["nms"]["identical"] is True
    # DBSCAN also timed on the very boxes the cascade clustered for the CT.
    own = d["cascade_sets"]
    assert [o["ct"] for o in own] == ["small_ct.nii.gz"] and own[0]["n"] == cell["boxes"] > 0
    assert own[0]["identical"] is True and own[0]["speedup_vs_sklearn"] > 0
    # ... and the whole two-stage clustering of those boxes against the paper's per-cluster sklearn calls.
    two = d["two_stage"]
    assert [t["ct"] for t in two] == ["small_ct.nii.gz"] and two[0]["n"] == cell["boxes"]
    assert two[0]["identical"] is True and two[0]["candidates"] > 0
    assert two[0]["sklearn_calls"] >= 1 + two[0]["candidates"]  # one per stage-1 cluster, plus stage 1
    assert rep["bridge"]["sizes"]["message_bytes"] > 0 and rep["publish_ms"]["p50"] > 0


def test_quick_writes_markdown_and_pngs(quick_run):
    out, r = quick_run
    md = (out / "r.md").read_text()
    assert "| backend | prec | CT |" in md and "small_ct.nii.gz" in md and "DBSCAN" in md
    assert "DBSCAN, the cascade's boxes of CT small_ct.nii.gz" in md
    assert "two-stage clustering (2 DBSCAN calls), CT small_ct.nii.gz" in md
    assert md.strip() in r.stdout  # the same table is printed
    for name in ("stage_breakdown.png", "latency_vs_size.png", "micro_speedups.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_outputs_are_not_overwritten(quick_run, small_ct):
    out, _ = quick_run
    r = _spinert("bench", "--quick", "--ct", str(small_ct), "--json", str(out / "r.json"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--overwrite" in r.stderr


def test_compare_prints_ratios(quick_run, tmp_path):
    out, _ = quick_run
    a = json.loads((out / "r.json").read_text())
    b = copy.deepcopy(a)
    for q in ("p50", "p95", "p99"):
        b["end_to_end_ms"][q] = a["end_to_end_ms"][q] * 2
        b["stages"]["detect"][f"{q}_ms"] = a["stages"]["detect"][f"{q}_ms"] / 4
    (tmp_path / "b.json").write_text(json.dumps(b))
    r = _spinert("bench", "--compare", str(out / "r.json"), str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0] if not ln.startswith("end to end") else "e2e": ln for ln in r.stdout.splitlines() if ln}
    assert lines["e2e"].split()[-3:] == ["2.000", "2.000", "2.000"]
    assert lines["detect"].split()[-3:] == ["0.250", "0.250", "0.250"]


@pytest.mark.parametrize("args, needle", [
    (["--runs", "abc"], "--runs"),
    (["--runs", "0"], "--runs"),
    (["--warmup", "-1"], "--warmup"),
    (["--sizes", "7"], "--sizes"),
    (["--compare", "/nonexistent/a.json", "/nonexistent/b.json"], "does not exist"),
    (["--ct", "/nonexistent/ct.nii.gz"], "does not exist"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = _spinert("bench", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_compare_rejects_non_report(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"hello": 1}))
    r = _spinert("bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert r.returncode == 2 and "not a spinert bench report" in r.stderr


def test_pct_and_sizes():
    p = pct([1.0, 2.0, 3.0, 4.0, 100.0])
    assert p["p50"] == 3.0 and p["max"] == 100.0 and p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
    assert pct([])["p50"] is None
    assert parse_sizes(["sample", "6", "24"]) == ["sample", 6, 24]
    with pytest.raises(InputError):
        parse_sizes(["lots"])


def test_train_step_micro_bench_writes_json_and_plot(tmp_path):
    pytest.importorskip("torch")
    from bench import micro_train_step

    assert micro_train_step.main(["--widths", "4,8,16", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "train_step.json").read_text())
    assert [r["widths"] for r in rows] == [[4, 8, 16]]
    assert rows[0]["ncdhw_s"] > 0 and rows[0]["channels_last_s"] > 0
    assert rows[0]["speedup"] == pytest.approx(rows[0]["ncdhw_s"] / rows[0]["channels_last_s"])
    assert (tmp_path / "train_step.png").stat().st_size > 1000


def test_density_field_micro_bench_agrees_with_scipy_and_writes_json_and_plot(tmp_path):
    from bench import micro_density_field

    assert micro_density_field.main(["--sizes", "24", "37", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "density_field.json").read_text())
    assert [r["size"] for r in rows] == [24, 37]
    assert all(r["max_abs_diff"] < 1e-6 and r["einsum_s"] > 0 and r["zoom_s"] > 0 for r in rows)
    assert (tmp_path / "density_field.png").stat().st_size > 1000
