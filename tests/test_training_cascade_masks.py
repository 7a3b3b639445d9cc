"""The labeller can train on the segmenter's own masks (training.cascade_masks, `--masks-from`), and a
fine-tune from --init weights is scored against its start (training.common.fit ``validate_init``)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from _synth_spine import make_folder  # noqa: E402

from engine.models import default_models_dir, load_manifest  # noqa: E402
from engine.preprocess import crop_centered  # noqa: E402
from spinert.cli import main  # noqa: E402
from training import common, data, labeller  # noqa: E402
from training.cascade_masks import SegmenterMasks  # noqa: E402

SHIPPED = default_models_dir()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("synth"), n=2)


@pytest.fixture(scope="module")
def masks():
    if not load_manifest(SHIPPED)["segmenter"].is_trained:
        pytest.skip("the shipped segmenter is a placeholder")
    return SegmenterMasks(SHIPPED)


def test_segmenter_masks_are_drawn_by_the_runtime_and_reproducible(data_dir, masks):
    case = data.load_case(data_dir, data.list_cases(data_dir)[0], 1.0)
    drawn = masks(case)
    assert sorted(drawn.index) == sorted(case.centers) and not drawn.dropped
    for lab, n in drawn.index.items():
        own, truth = drawn.owner == n + 1, case.labels == lab
        dice = 2 * (own & truth).sum() / (own.sum() + truth.sum())
        # The segmenter's mask of the right vertebra (a neighbour's would score about 0), but not the
        # ground truth itself. The end vertebra of these small synthetic spines scores 0.79 with
        # segmenter stage 11 (0.91 and 0.89 its neighbours).
        assert 0.7 < dice < 1.0
        np.testing.assert_allclose(drawn.centers[lab], ndimage.center_of_mass(own), atol=1e-6)
    again = masks(case)
    np.testing.assert_array_equal(again.owner, drawn.owner)  # the centre offsets are seeded by the case id


def test_labeller_trains_and_evaluates_on_segmenter_masks(data_dir, masks, tmp_path, capsys):
    out, work = tmp_path / "models", tmp_path / "work"
    args = ["--data", str(data_dir), "--out", str(out), "--work", str(work), "--device", "cpu",
            "--masks-from", str(SHIPPED)]
    assert main(["train", "labeller", "--tiny", *args]) == 0
    spec = load_manifest(out)["labeller"]
    assert masks.spec.sha256["fp32"][:16] in spec.raw["trained"]["schedule"]["masks"]
    # Epochs were chosen by the labelling after sequence decoding of the validation chains.
    assert spec.raw["trained"]["schedule"]["selection"] == ["chain_acc", "acc"]
    assert 0.0 <= spec.metrics["chain_acc"] <= 1.0 and spec.metrics["n_chains"] == 1
    cache = work / f"cache-{masks.tag}"
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 6 and not (work / "cache").exists()
    # A cached mask is the segmenter's, cropped around its centroid.
    ct, m, lab, c, _ = labeller.load_vert(files[0])
    cid = files[0].name.split("__")[0]
    drawn = masks(data.load_case(data_dir, cid, 1.0))
    start = np.round(drawn.centers[lab]).astype(int) - np.asarray(m.shape) // 2
    np.testing.assert_allclose(c, drawn.centers[lab] - start)
    np.testing.assert_array_equal(m, crop_centered(drawn.owner, drawn.centers[lab], m.shape, fill=0)
                                  == drawn.index[lab] + 1)
    capsys.readouterr()
    assert main(["train", "labeller", "--evaluate", str(data_dir), "--out", str(out), "--work", str(work),
                 "--masks-from", str(SHIPPED)]) == 0
    assert "'n_val': 6" in capsys.readouterr().out
    assert (work / f"eval_cache-{masks.tag}").is_dir()
    # A fine-tune from this file keeps its output columns, whatever labels its training masks hold.
    from training.cli import build_namespace

    assert labeller.init_classes(build_namespace(model="labeller", init=str(out / "labeller.onnx"))) == [20, 21, 22]
    assert labeller.init_classes(build_namespace(model="labeller", init=str(SHIPPED / "segmenter.onnx"))) == []


def test_masks_from_a_folder_without_a_segmenter_is_one_line(data_dir, tmp_path, capsys):
    rc = main(["train", "labeller", "--tiny", "--data", str(data_dir), "--out", str(tmp_path / "m"),
               "--work", str(tmp_path / "w"), "--masks-from", str(tmp_path / "nothing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--masks-from" in err[0]


@pytest.mark.parametrize("validate_init", [True, False])
def test_fit_keeps_the_init_weights_when_no_epoch_beats_them(tmp_path, validate_init):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(_i: int) -> float:  # every step moves the weight away from the best value (1.0)
        with torch.no_grad():
            model.weight.add_(0.5)
        return 0.0

    res = common.fit(model, opt, None, step, lambda: {"acc": -abs(float(model.weight.detach()) - 1.0)},
                     common.Schedule(2, 1, 1, 0.1), tmp_path / "ckpt", False, key="acc", log=lambda _m: None,
                     validate_init=validate_init)
    common.load_ckpt(res["best_path"], model)
    if validate_init:
        assert res["history"][0]["epoch"] == -1 and res["best"]["epoch"] == -1
        assert float(model.weight.detach()) == 1.0
    else:
        assert res["best"]["epoch"] == 0 and float(model.weight.detach()) == 1.5


def test_fit_breaks_a_tie_of_the_first_key_with_the_second(tmp_path):
    """Chain accuracy saturates on a small validation set; the later, better single accuracy wins the tie."""
    model = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = iter([{"chain_acc": 0.9, "acc": 0.80}, {"chain_acc": 0.99, "acc": 0.85},
                   {"chain_acc": 0.99, "acc": 0.90}, {"chain_acc": 0.99, "acc": 0.90},
                   {"chain_acc": 0.95, "acc": 0.99}])

    def step(_i: int) -> float:
        with torch.no_grad():
            model.weight.add_(1.0)
        return 0.0

    res = common.fit(model, opt, None, step, lambda: next(scores), common.Schedule(5, 1, 1, 0.1),
                     tmp_path / "ckpt", False, key=("chain_acc", "acc"), log=lambda _m: None)
    assert res["best"]["epoch"] == 2  # not 1 (lower acc), not 3 (only equal), not 4 (lower chain_acc)
    start = float(model.weight.detach())
    common.load_ckpt(res["best_path"], model)
    assert float(model.weight.detach()) == start - 2.0


def _chain(labels: list[int], case: str = "c0"):
    """Chain facts of one case: lumbar centres one typical step apart along k (1 mm grid), top first."""
    from engine.sequence import DEFAULT_STEP_MM

    k = np.cumsum([0.0] + [DEFAULT_STEP_MM[a] for a in labels[:-1]])
    return [(case, np.array([40.0 + z, 60.0, 60.0]), 50_000) for z in k]


def test_chain_accuracy_decodes_each_case_like_the_runtime():
    classes = list(range(18, 25))  # T11 .. L5
    truth = [20, 21, 22, 23, 24]  # L1 .. L5
    chain, cut = _chain(truth), [False] * 5

    def scores(read_as: list[int]) -> np.ndarray:
        p = np.full((5, len(classes)), 0.02)
        for i, lab in enumerate(read_as):
            p[i, classes.index(lab)] = 0.88
        return p / p.sum(1, keepdims=True)

    # One vertebra read a level low: its neighbours outvote it, as in the cascade.
    one_off = labeller.chain_accuracy(scores([20, 21, 23, 23, 24]), truth, chain, cut, classes, 1.0)
    assert one_off["chain_acc"] == 1.0 and one_off["chain_cases"] == 1.0 and one_off["n_chains"] == 1
    # The whole chain read a level high: every label moves, single-vertebra accuracy would say 0 % too.
    shifted = labeller.chain_accuracy(scores([19, 20, 21, 22, 23]), truth, chain, cut, classes, 1.0)
    assert shifted["chain_acc"] == 0.0 and shifted["chain_cases"] == 0.0
    # Two cases are decoded apart: one right, one shifted.
    both = labeller.chain_accuracy(np.concatenate([scores(truth), scores([19, 20, 21, 22, 23])]), truth + truth,
                                   chain + _chain(truth, "c1"), cut + cut, classes, 1.0)
    assert both["chain_acc"] == 0.5 and both["chain_cases"] == 0.5 and both["n_chains"] == 2


def _same_npz(a: list[Path], b: list[Path]) -> None:
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        with np.load(pa) as za, np.load(pb) as zb:
            assert za.files == zb.files
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k])


def test_caches_filled_by_two_processes_equal_one_process(data_dir, masks, tmp_path):
    from training import segmenter

    ids = data.list_cases(data_dir)
    pp = dict(labeller.PREPROCESS)
    one = labeller.cache_vertebrae(data_dir, ids, tmp_path / "lab1", pp, masks, workers=1)
    two = labeller.cache_vertebrae(data_dir, ids, tmp_path / "lab2", pp, masks, workers=2)
    assert len(one) == 6
    _same_npz(one, two)  # each worker opened its own segmenter session from the models folder
    spp = dict(segmenter.PREPROCESS, roi=32)
    _same_npz(segmenter.cache_rois(data_dir, ids, tmp_path / "seg1", spp, 2, workers=1),
              segmenter.cache_rois(data_dir, ids, tmp_path / "seg2", spp, 2, workers=2))
    # A cached case is not cached again: its files keep their modification time.
    stamp = [p.stat().st_mtime_ns for p in two]
    assert labeller.cache_vertebrae(data_dir, ids, tmp_path / "lab2", pp, masks, workers=2) == two
    assert [p.stat().st_mtime_ns for p in two] == stamp


def test_workers_below_one_is_one_line(data_dir, tmp_path, capsys):
    rc = main(["train", "labeller", "--tiny", "--data", str(data_dir), "--out", str(tmp_path / "m"),
               "--work", str(tmp_path / "w"), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--workers" in err[0]
