"""`spinert train ... --tiny` runs end to end on two small synthetic cases: cache, train, checkpoint,
resume, validate, export (fp32 + fp16), parity, manifest + model card."""
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _synth_spine import make_folder  # noqa: E402

from engine.models import load_manifest  # noqa: E402
from spinert.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("synth"), n=2)


def _train(model, data_dir, tmp_path, *extra):
    out, work = tmp_path / "models", tmp_path / "work"
    rc = main(["train", model, "--data", str(data_dir), "--out", str(out), "--work", str(work), "--tiny",
               "--device", "cpu", *extra])
    assert rc == 0
    return out, work


def _check_shipped(out, name):
    spec = load_manifest(out)[name]
    spec.verify()
    assert spec.is_trained and spec.raw["trained"]["tiny"] is True
    assert spec.raw["parity"]["fp32_max_abs"] <= 1e-3
    for prec in ("fp32", "fp16"):
        ort.InferenceSession(str(spec.path(prec)), providers=["CPUExecutionProvider"])
    card = (out / f"{name}.md").read_text()
    assert "Validation metrics" in card and "Training" in card
    return spec


def test_segmenter_tiny_and_resume(data_dir, tmp_path, capsys):
    out, work = _train("segmenter", data_dir, tmp_path)
    spec = _check_shipped(out, "segmenter")
    assert 0.0 <= spec.metrics["dice_mean"] <= 1.0
    assert 0.0 <= spec.metrics["errors_within_1_voxel_of_surface"] <= 1.0  # the final evaluation's error anatomy
    assert (work / "ckpt" / "last.pt").is_file()
    # Shipping again without --overwrite is refused (one line, exit 2) ...
    assert main(["train", "segmenter", "--data", str(data_dir), "--out", str(out), "--work", str(work),
                 "--tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # ... and a resumed run with one more epoch continues from the checkpoint.
    rc = main(["train", "segmenter", "--data", str(data_dir), "--out", str(out), "--work", str(work), "--tiny",
               "--resume", "--epochs", "2", "--overwrite"])
    assert rc == 0
    assert "resumed from" in capsys.readouterr().out
    assert len(load_manifest(out)["segmenter"].raw["metrics"]) > 0


def test_labeller_tiny_and_evaluate(data_dir, tmp_path, capsys):
    out, work = _train("labeller", data_dir, tmp_path)
    spec = _check_shipped(out, "labeller")
    assert spec.classes == [20, 21, 22]
    assert spec.outputs[0]["shape"] == ["N", 3]
    assert 0.0 <= spec.metrics["acc"] <= 1.0
    capsys.readouterr()
    # Held-out acceptance figures of the shipped ONNX file (here on the same folder: a smoke run).
    assert main(["train", "labeller", "--evaluate", str(data_dir), "--out", str(out), "--work", str(work),
                 "--precision", "fp16"]) == 0
    assert "'n_val': 6" in capsys.readouterr().out


def test_labeller_validates_on_a_folder_of_its_own(data_dir, tmp_path, capsys):
    # --val-data: every case of --data trains, the other folder's cases validate (and are recorded).
    val = tmp_path / "val"
    val.mkdir()
    for f in data_dir.glob("synth-01_*"):
        (val / f.name.replace("synth-01", "val-01")).write_bytes(f.read_bytes())
    out, _ = _train("labeller", data_dir, tmp_path, "--val-data", str(val))
    trained = load_manifest(out)["labeller"].raw["trained"]
    assert trained["cases_train"] == ["synth-00", "synth-01"] and trained["cases_val"] == ["val-01"]
    assert trained["val_data"] == str(val)
    capsys.readouterr()
    # Validation ids that repeat training ones (caches are keyed by id), or no such folder: one line, exit 2.
    for bad, needle in ((data_dir, "repeats 2 case id(s)"), (tmp_path / "nope", "--val-data folder not found")):
        assert main(["train", "labeller", "--data", str(data_dir), "--val-data", str(bad), "--tiny",
                     "--out", str(tmp_path / "m2"), "--work", str(tmp_path / "w2")]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_labeller_init_refuses_a_label_its_head_lacks(data_dir, tmp_path, capsys):
    # Session 13: one generator-4 case held a T13 (VerSe 28), a class the shipped labeller's head lacks;
    # the fine-tune failed on a weight-shape mismatch that pointed at --widths. Now one line names the label.
    import numpy as np
    import SimpleITK as sitk

    t13 = tmp_path / "t13"
    t13.mkdir()
    for f in data_dir.glob("synth-00_*"):
        (t13 / f.name).write_bytes(f.read_bytes())
    msk = next(t13.glob("*_seg-vert_msk.nii.gz"))
    img = sitk.ReadImage(str(msk))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == arr.max()] = 28
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(msk))
    shipped = Path(load_manifest()["labeller"].path("fp32"))
    assert main(["train", "labeller", "--data", str(t13), "--init", str(shipped), "--tiny", "--out",
                 str(tmp_path / "m"), "--work", str(tmp_path / "w")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("spinert train:")]
    assert len(errors) == 1 and "add 28" in errors[0]  # above it only the caches' progress bars


def test_detector_tiny(data_dir, tmp_path, capsys):
    out, work = _train("detector", data_dir, tmp_path)
    spec = _check_shipped(out, "detector")
    capsys.readouterr()
    # Held-out figures of the shipped ONNX file on a folder of sagittal slices (here the same cases).
    assert main(["train", "detector", "--evaluate", str(data_dir), "--out", str(out), "--work", str(work)]) == 0
    assert "map50" in capsys.readouterr().out.lower()
    assert spec.inputs[0]["name"] == "images" and spec.outputs[0]["name"] == "output0"
    assert spec.outputs[0]["shape"][:2] == ["N", 5]
    labels = list((work / "dataset" / "labels" / "train").glob("*.txt"))
    assert labels and any(p.read_text().strip() for p in labels)
    row = next(p for p in labels if p.read_text().strip()).read_text().split("\n")[0].split()
    assert row[0] == "0" and all(0.0 <= float(v) <= 1.0 for v in row[1:])


def test_bad_inputs_one_line(tmp_path, capsys):
    assert main(["train", "segmenter", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "labeller", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m"),
                 "--work", str(tmp_path / "w")]) == 2
    assert "no VerSe-style cases" in capsys.readouterr().err
    assert main(["train", "segmenter", "--data", str(tmp_path / "empty"), "--init", str(tmp_path / "no.pt"),
                 "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w")]) == 2
    assert "--init weights not found" in capsys.readouterr().err


def test_labeller_fov_cut_is_air_and_empty_mask_outside_the_box():
    import numpy as np

    from engine.preprocess import AIR_HU
    from training.labeller import FOV_CUT_MM, fov_cut

    ct = np.full((200, 200, 200), 300.0, np.float32)  # wider than twice the largest half-width
    m = np.ones(ct.shape, dtype=bool)
    c = np.array([100.0, 100.0, 100.0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        cut_ct, cut_m = fov_cut(ct, m, c, rng, 1.0)
        assert np.array_equal(cut_ct == AIR_HU, ~cut_m)  # CT and mask cut by the same box
        assert cut_m[100, 100, 100] and cut_m[tuple((c - FOV_CUT_MM[0] + 1).astype(int))]  # the centre stays
        assert (~cut_m).any()  # at least one axis is cut
    assert m.all() and (ct == 300.0).all()  # inputs untouched


def test_segmenter_augment_moves_ct_and_mask_together():
    import numpy as np

    from training.segmenter import augment

    rng = np.random.default_rng(3)
    ct = np.full((24, 24, 24), -1000.0, np.float32)
    ct[8:16, 8:16, 2:8] = 1000.0  # an off-centre block on the left (low i)
    m = ct > 0
    aug = {"flip_i_p": 1.0, "thick_slice_p": 1.0, "thick_slice_sigma_vox": [1.0, 1.0],
           "inplane_blur_p": 0.0, "inplane_sigma_vox": [0.5, 0.5], "noise_p": 0.0, "noise_hu": [5.0, 5.0]}
    a_ct, a_m = augment(ct, m, rng, aug)
    assert np.array_equal(a_m, m[:, :, ::-1])  # the target is flipped, never blurred
    assert a_ct[12, 12, 20] > 500 and a_ct[12, 12, 4] < -500  # the CT flipped with it
    assert a_ct[7, 12, 20] > -900.0  # thick-slice blur spreads the block along k ...
    assert np.isclose(a_ct[12, 7, 20], -1000.0)  # ... and not along j
    assert m[12, 12, 4] and ct[12, 12, 4] == 1000.0  # inputs untouched


def test_segmenter_sub_crops_on_the_target_reach_its_far_parts():
    import numpy as np

    from training.segmenter import make_sample

    pp = {"roi": 32, "hu_window": [-400.0, 1400.0], "weight_sigma_mm": 8.0, "spacing_mm": 1.0}
    ct = np.full((32, 32, 32), -1000.0, np.float32)
    m = np.zeros(ct.shape, dtype=bool)
    m[1:4, 1:4, 1:4] = True  # only a far corner of the ROI belongs to the target (a cut vertebra's process)
    ct[m] = 900.0
    zero = np.zeros(3, dtype=int)
    hits = {p: sum(make_sample(ct, m, pp, zero, 8, np.random.default_rng(s), p)[1].any() for s in range(40))
            for p in (0.0, 1.0)}
    assert hits[1.0] == 40  # centred on a target voxel: the target is always in the crop
    assert hits[0.0] < 10  # centre-biased crops rarely see it
    x, y = make_sample(ct, m, pp, zero, 8, np.random.default_rng(0), 1.0)
    assert x.shape == (2, 8, 8, 8) and y.shape == (1, 8, 8, 8)
    assert np.array_equal(y[0] > 0, x[0] > 0.5)  # CT and target cropped together


def test_labeller_mirror_keeps_the_centre_on_the_vertebra():
    import numpy as np

    from training import labeller

    ct = np.full((20, 20, 30), -1000.0, np.float32)
    m = np.zeros(ct.shape, dtype=bool)
    m[8:12, 8:12, 3:9] = True  # a vertebra near low i
    ct[m] = 800.0
    c = np.array([9.5, 9.5, 5.5])
    rng = np.random.default_rng(0)
    flipped = 0
    for _ in range(20):
        a_ct, a_m, a_c = labeller.scanner_and_mask(ct, m, c, rng)
        assert a_ct.shape == ct.shape and a_m.shape == m.shape
        # The centre moves with the mirror image: it still lies inside the (possibly eroded) mask's box.
        idx = np.argwhere(a_m)
        assert (idx.min(axis=0) - 1 <= a_c).all() and (a_c <= idx.max(axis=0) + 1).all()
        flipped += a_c[2] > 15
    assert 0 < flipped < 20  # both mirror images occur


def test_labeller_zoom_scales_the_vertebra_in_the_input():
    import numpy as np

    from engine.modelio import labeller_input
    from training import labeller

    pp = dict(labeller.PREPROCESS, shape=[64, 64, 64], extent_mm=[64.0, 64.0, 64.0])
    ct = np.full((80, 80, 80), -1000.0, np.float32)
    m = np.zeros(ct.shape, dtype=bool)
    m[25:55, 25:55, 25:55] = True  # a 30 mm cube
    ct[m] = 800.0
    c = np.array([39.5, 39.5, 39.5])
    rng = np.random.default_rng(1)
    base = labeller_input(m, ct, c, pp)[0].sum()
    ratios = []
    for _ in range(40):
        z = labeller.zoomed(pp, rng)
        assert pp["extent_mm"] == [64.0, 64.0, 64.0]  # the caller's dict is untouched
        x = labeller_input(m, ct, c, z)
        assert x.shape == (2, 64, 64, 64)
        zoom = 64.0 / np.asarray(z["extent_mm"])
        lo, hi = labeller.SCALE[0] * (1 - labeller.SCALE_AXIS), labeller.SCALE[1] * (1 + labeller.SCALE_AXIS)
        assert ((lo <= zoom) & (zoom <= hi)).all()
        # The mask fills the input in proportion to the zoom's volume factor.
        ratios.append((x[0].sum() / base) / np.prod(zoom))
    np.testing.assert_allclose(ratios, 1.0, atol=0.08)


@pytest.mark.parametrize("light", [1, 0])
def test_widening_keeps_the_outputs(light):
    import torch

    from training.nets import AttentionUNet3D, UNetConfig
    from training.widen import state_widths, widen

    torch.manual_seed(0)
    old = AttentionUNet3D(UNetConfig(widths=[4, 8, 16], light_levels=light))
    for p in old.parameters():  # trained-looking weights: nothing zero, BN statistics away from identity
        torch.nn.init.normal_(p, 0.0, 0.3)
    for m in old.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    old.eval()
    x = torch.rand(2, 2, 16, 16, 16)
    with torch.no_grad():
        ref = old(x)
        # level 0 alone; every level (12 also widens the attention gates' inner channels, max(4, w // 2))
        for widths in ([6, 8, 16], [12, 8, 16], [8, 16, 32], [4, 12, 16]):
            new = widen(old, widths).eval()
            assert new.cfg.widths == widths and state_widths(new.state_dict()) == widths
            torch.testing.assert_close(new(x), ref, atol=1e-5, rtol=0)
            # The new channels are live (random filters), not dead zeros: training can grow them.
            for i, (w_new, w_old) in enumerate(zip(widths, [4, 8, 16])):
                conv = new.enc[i][0] if i < light else new.enc[i][0][0]
                assert w_new == w_old or conv.weight[w_old:].abs().sum() > 0
        # A widened network that has trained a little (its new channels now read) differs: the test can fail.
        new = widen(old, [8, 16, 32]).eval()
        conv = new.dec[-1][0] if light else new.dec[-1][0][0]
        conv.weight.data[:, 4:8] += 0.1  # the columns reading the new gated-skip channels
        assert (new(x) - ref).abs().max() > 1e-4
    with pytest.raises(ValueError, match="narrower"):
        widen(old, [2, 8, 16])
    with pytest.raises(ValueError, match="levels"):
        widen(old, [4, 8])


def test_segmenter_init_from_a_narrower_checkpoint(data_dir, tmp_path, capsys):
    import torch

    _, work = _train("segmenter", data_dir, tmp_path)  # widths 4, 8, 16
    ck = work / "ckpt" / "best.pt"
    out2 = tmp_path / "models2"
    rc = main(["train", "segmenter", "--data", str(data_dir), "--out", str(out2), "--work", str(tmp_path / "w2"),
               "--tiny", "--device", "cpu", "--init", str(ck), "--widths", "8,8,16"])
    assert rc == 0
    assert "widened [4, 8, 16] -> [8, 8, 16] channels" in capsys.readouterr().out
    spec = _check_shipped(out2, "segmenter")
    assert spec.raw["arch"]["widths"] == [8, 8, 16]
    assert torch.load(tmp_path / "w2" / "ckpt" / "best.pt", weights_only=False)["model"]["enc.0.0.weight"].shape[0] == 8


def test_coarse_scanner_simulation_blurs_by_the_voxel_and_keeps_ct_and_mask_together():
    import numpy as np

    from training.lowres import simulate_resolution

    vol = np.full((40, 40, 40), -1000.0, np.float32)
    vol[12:28, 10:30, 10:30] = 1000.0
    m = vol > 0
    same = simulate_resolution(vol, np.array([1.0, 0.8, 0.5]))  # no axis coarser than the 1 mm grid
    np.testing.assert_array_equal(same, vol)

    def edge_width(a, axis):  # voxels between 10 % and 90 % of the step along one axis through the block
        line = np.moveaxis(a, axis, 0)[:20, 20, 20]
        t = (line + 1000.0) / 2000.0
        return int(((t > 0.1) & (t < 0.9)).sum())

    out, om = simulate_resolution(vol, np.array([4.0, 1.0, 2.5]), mask=m)
    assert out.shape == vol.shape and om.shape == m.shape and om.dtype == bool
    assert edge_width(out, 0) > edge_width(out, 2) > edge_width(out, 1) == 0  # 4 mm slices, 2.5 mm pixels, j intact
    assert abs(float((out + 1000.0).sum()) / float((vol + 1000.0).sum()) - 1.0) < 0.02  # bone is averaged, not lost
    # The mask is what the blurred CT shows at half height: the two stay registered.
    agree = (om == (out > 0.0)).mean()
    assert agree > 0.995
    assert 0.9 < om.sum() / m.sum() < 1.1


def test_labeller_coarse_p_out_of_range_is_one_line(data_dir, tmp_path, capsys):
    assert main(["train", "labeller", "--data", str(data_dir), "--out", str(tmp_path / "m"), "--work",
                 str(tmp_path / "w"), "--tiny", "--coarse-p", "1.5"]) == 2
    assert "--coarse-p must be a probability" in capsys.readouterr().err


def test_segmenter_error_anatomy_tells_a_wandering_boundary_from_a_wrong_part():
    import numpy as np

    from training.segmenter import error_anatomy

    t = np.zeros((30, 30, 30), dtype=bool)
    t[8:20, 8:20, 8:20] = True
    shifted = np.roll(t, 1, axis=2)  # the boundary one voxel off: every error touches the surface
    near, ratio = error_anatomy(shifted, t)
    assert near == 1.0 and ratio == 1.0
    extra = t.copy()
    extra[24:28, 24:28, 24:28] = True  # a far blob (a neighbour's process): errors away from the surface
    near, ratio = error_anatomy(extra, t)
    assert near < 0.1 and ratio > 1.0
    assert error_anatomy(t, t) == (1.0, 1.0)


def test_fainter_bone_scales_only_what_lies_above_soft_tissue():
    import numpy as np

    from training.density import SOFT_TISSUE_HU, random_density, scale_bone

    ct = np.array([-1000.0, -100.0, 40.0, 100.0, 300.0, 1100.0], np.float32)
    out = scale_bone(ct, 0.5)
    np.testing.assert_array_equal(out[:4], ct[:4])  # air, fat, muscle untouched
    np.testing.assert_allclose(out[4:], SOFT_TISSUE_HU + (ct[4:] - SOFT_TISSUE_HU) * 0.5)
    assert ct[5] == 1100.0  # input untouched
    rng = np.random.default_rng(0)
    for _ in range(10):
        o = random_density(ct, rng)
        assert (o[4:] <= ct[4:]).all() and (o[4:] > SOFT_TISSUE_HU).all()


def test_density_field_is_smooth_bounded_and_fades_parts_of_the_bone_apart():
    import numpy as np
    from scipy.ndimage import zoom

    from training.density import SOFT_TISSUE_HU, scale_bone, smooth_field

    f = smooth_field((40, 36, 32), np.random.default_rng(3), 0.15, 1.0, 4)
    assert f.shape == (40, 36, 32) and f.dtype == np.float32
    assert f.min() >= 0.15 and f.max() <= 1.0 and f.max() - f.min() > 0.2
    assert np.abs(np.diff(f, axis=0)).max() < 0.85 / 9  # one cell spans 10 voxels: no steps
    # the same trilinear field scipy draws from the same cells
    cells = np.random.default_rng(3).uniform(0.15, 1.0, size=(4, 4, 4))
    np.testing.assert_allclose(f, zoom(cells, (10, 9, 8), order=1, mode="nearest", grid_mode=True), atol=1e-6)
    ct = np.full((40, 36, 32), 500.0, np.float32)
    ct[:, :, :4] = 40.0  # muscle
    out = scale_bone(ct, f)
    np.testing.assert_array_equal(out[:, :, :4], 40.0)
    np.testing.assert_allclose(out[:, :, 4:], SOFT_TISSUE_HU + 400.0 * f[:, :, 4:], rtol=1e-6)
    assert out[..., 4:].max() - out[..., 4:].min() > 80  # bone of one crop fades unevenly


def test_segmenter_spread_probability_out_of_range_is_one_line(data_dir, tmp_path, capsys):
    assert main(["train", "segmenter", "--data", str(data_dir), "--out", str(tmp_path / "m"), "--work",
                 str(tmp_path / "w"), "--tiny", "--density-p", "-0.1"]) == 2
    assert "--density-p must be a probability" in capsys.readouterr().err


def test_segmenter_tiny_with_real_spread_records_it(data_dir, tmp_path):
    out, _ = _train("segmenter", data_dir, tmp_path, "--density-p", "1", "--coarse-p", "1")
    spread = load_manifest(out)["segmenter"].raw["trained"]["schedule"]["real_spread"]
    assert spread["density_p"] == 1.0 and spread["coarse_p"] == 1.0
    assert spread["coarse_voxel"]["inplane_mm"] == [1.0, 3.2]
