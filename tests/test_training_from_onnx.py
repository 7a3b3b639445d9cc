"""A training run can start from a shipped ONNX file: weights mapped back, BatchNorm unfolded, parity checked."""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
from _synth_spine import make_folder  # noqa: E402

from spinert.cli import main  # noqa: E402
from training.export import export_onnx, to_fp16  # noqa: E402
from training.from_onnx import OnnxInitError, load_onnx_init  # noqa: E402
from training.nets import AttentionUNet3D, LabellerConfig, ResNetTransformer3D, UNetConfig  # noqa: E402


def _trained_like(model):
    """Random weights AND random BatchNorm statistics/affine: what a trained network's folded graph holds."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _ort(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("kind", ["segmenter", "labeller"])
def test_onnx_weights_come_back_and_batchnorm_is_unfolded(kind, tmp_path):
    if kind == "segmenter":
        make = lambda: AttentionUNet3D(UNetConfig(widths=[4, 8, 16]))  # noqa: E731
        shape = (2, 32, 32, 32)
    else:
        make = lambda: ResNetTransformer3D(LabellerConfig(in_channels=2, num_classes=5, widths=[4, 8, 8, 16],  # noqa: E731
                                                          input_shape=[16, 32, 32], layers=1))
        shape = (2, 16, 32, 32)
    src = _trained_like(make())
    onnx_path = export_onnx(src, torch.rand(1, *shape), tmp_path / f"{kind}.onnx", "x", "y")
    x = torch.rand(4, *shape)

    torch.manual_seed(2)
    new = make()  # different random start: everything must come from the file
    err = load_onnx_init(new, onnx_path, [x], log=lambda s: None)
    assert err < 1e-4
    with torch.no_grad():
        np.testing.assert_allclose(new.eval()(x).numpy(), _ort(onnx_path, x), atol=1e-4)
        np.testing.assert_allclose(new(x).numpy(), src(x).numpy(), atol=1e-4)
        # Unfolded on exactly this batch, train-mode BatchNorm (batch statistics) computes the same function:
        # training continues from the shipped network, not from a renormalised one.
        train_out = new.train()(x).numpy()
    new.eval()
    if kind == "segmenter":  # the labeller's dropout makes train mode random; its BN is covered by eval parity
        np.testing.assert_allclose(train_out, src(x).detach().numpy(), atol=1e-3)
        bn = new.enc[0][1]
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # statistics were measured


def test_onnx_init_refuses_other_networks_and_fp16_files(tmp_path):
    src = _trained_like(AttentionUNet3D(UNetConfig(widths=[4, 8, 16])))
    fp32 = export_onnx(src, torch.rand(1, 2, 32, 32, 32), tmp_path / "s.onnx", "x", "y")
    fp16 = to_fp16(fp32, tmp_path / "s_fp16.onnx")
    x = [torch.rand(1, 2, 32, 32, 32)]
    with pytest.raises(OnnxInitError, match="not this network"):
        load_onnx_init(AttentionUNet3D(UNetConfig(widths=[4, 8, 32])), fp32, x, log=lambda s: None)
    with pytest.raises(OnnxInitError, match="fp32"):
        load_onnx_init(AttentionUNet3D(UNetConfig(widths=[4, 8, 16])), fp16, x, log=lambda s: None)


def test_train_from_the_shipped_onnx_of_an_earlier_run(tmp_path, capsys):
    data = make_folder(tmp_path / "synth", n=2)
    out, out2 = tmp_path / "models", tmp_path / "models2"
    common = ["--data", str(data), "--tiny", "--device", "cpu"]
    assert main(["train", "segmenter", *common, "--out", str(out), "--work", str(tmp_path / "w1")]) == 0
    capsys.readouterr()
    rc = main(["train", "segmenter", *common, "--out", str(out2), "--work", str(tmp_path / "w2"),
               "--init", str(out / "segmenter.onnx")])
    assert rc == 0
    assert "(ONNX; BatchNorm unfolded" in capsys.readouterr().out
    from engine.models import load_manifest, sha256_file

    init = load_manifest(out2)["segmenter"].raw["trained"]["schedule"]["init"]
    assert sha256_file(out / "segmenter.onnx")[:16] in init

    # A wider network grows from the narrower shipped file: read back at the widths its manifest records.
    out3 = tmp_path / "models3"
    rc = main(["train", "segmenter", *common, "--out", str(out3), "--work", str(tmp_path / "w3"),
               "--init", str(out / "segmenter.onnx"), "--widths", "8,16,32"])
    assert rc == 0
    assert "widened [4, 8, 16] -> [8, 16, 32] channels" in capsys.readouterr().out
    assert load_manifest(out3)["segmenter"].raw["arch"]["widths"] == [8, 16, 32]
    # Without --widths a fine-tune keeps the file's widths; a network never shrinks.
    rc = main(["train", "segmenter", *common, "--out", str(tmp_path / "models4"), "--work", str(tmp_path / "w4"),
               "--init", str(out3 / "segmenter.onnx"), "--widths", "4,16,32"])
    assert rc != 0
    assert "cannot start from --init" in capsys.readouterr().err
    assert main(["train", "segmenter", *common, "--out", str(tmp_path / "models5"), "--work", str(tmp_path / "w5"),
                 "--init", str(out3 / "segmenter.onnx")]) == 0
    assert load_manifest(tmp_path / "models5")["segmenter"].raw["arch"]["widths"] == [8, 16, 32]
