"""ONNX export of the torch definitions matches PyTorch on random input.

Bounds (max abs error, uniform [0,1) input): fp32 <= 1e-4 (probabilities and logits alike);
fp16 (fp16 weights/compute, fp32 I/O) <= 1e-2 on the segmenter's probabilities and <= 5e-2 on logits.
"""
import numpy as np
import pytest
import torch

from training import export
from training.nets import AttentionUNet3D, LabellerConfig, ResNetTransformer3D, UNetConfig


def _randomise_bn(model):
    # Non-trivial BN statistics, so the export is checked on more than the identity normalisation.
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_segmenter_export_parity(tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet3D(UNetConfig(widths=[4, 8, 16])).eval()
    _randomise_bn(model)
    fp32 = export.export_onnx(model, torch.rand(1, 2, 32, 32, 32), tmp_path / "s.onnx", "roi", "prob")
    fp16 = export.to_fp16(fp32, tmp_path / "s16.onnx")
    x = np.random.default_rng(0).random((3, 2, 32, 32, 32), dtype=np.float32)  # batch 3: dynamic axis
    assert export.parity(model, fp32, x) <= 1e-4
    assert export.parity(model, fp16, x) <= 1e-2
    ins, outs = export.io_spec(fp32)
    assert ins == [{"name": "roi", "shape": ["N", 2, 32, 32, 32], "dtype": "float32"}]
    assert outs[0]["name"] == "prob" and outs[0]["shape"][0] == "N"


def test_labeller_export_parity(tmp_path):
    torch.manual_seed(0)
    cfg = LabellerConfig(in_channels=2, num_classes=5, widths=[4, 8, 8, 16], input_shape=[16, 32, 32], layers=1)
    model = ResNetTransformer3D(cfg).eval()
    _randomise_bn(model)
    fp32 = export.export_onnx(model, torch.rand(1, 2, 16, 32, 32), tmp_path / "l.onnx", "x", "logits")
    fp16 = export.to_fp16(fp32, tmp_path / "l16.onnx")
    x = np.random.default_rng(1).random((2, 2, 16, 32, 32), dtype=np.float32)
    assert export.parity(model, fp32, x) <= 1e-4
    assert export.parity(model, fp16, x) <= 5e-2


def test_parity_would_catch_a_wrong_file(tmp_path):
    torch.manual_seed(0)
    a = AttentionUNet3D(UNetConfig(widths=[4, 8])).eval()
    b = AttentionUNet3D(UNetConfig(widths=[4, 8])).eval()
    f = export.export_onnx(b, torch.rand(1, 2, 16, 16, 16), tmp_path / "b.onnx", "roi", "prob")
    x = np.random.default_rng(0).random((1, 2, 16, 16, 16), dtype=np.float32)
    assert export.parity(a, f, x) > 1e-3
