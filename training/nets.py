"""Torch definitions of the segmenter (attention 3-D U-Net) and the labeller (3-D ResNet34-style + Transformer).

Sizes are CPU-trainable (see the model cards): the shapes of seed 000 are kept, the widths reduced.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------- segmenter
def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection: skip * sigmoid(psi(relu(Wx x + Wg g)))."""

    def __init__(self, c_skip: int, c_gate: int, c_inter: int):
        super().__init__()
        self.wx = nn.Sequential(nn.Conv3d(c_skip, c_inter, 1, bias=False), nn.BatchNorm3d(c_inter))
        self.wg = nn.Sequential(nn.Conv3d(c_gate, c_inter, 1, bias=False), nn.BatchNorm3d(c_inter))
        self.psi = nn.Sequential(nn.Conv3d(c_inter, 1, 1), nn.BatchNorm3d(1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        # gate is already upsampled to the skip's resolution by the decoder.
        return skip * self.psi(F.relu(self.wx(skip) + self.wg(gate)))


@dataclass
class UNetConfig:
    in_channels: int = 2
    widths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    # Levels (from the top) built with ONE conv per block instead of two: the full-resolution level holds
    # most of the voxels, so a thin single-conv level keeps 1 mm boundaries at a fraction of the FLOPs.
    light_levels: int = 1
    # A second 1x1 head on the half-resolution decoder level, upsampled and added to the full-resolution
    # logits: the thin full-resolution level then only refines boundaries, and the coarse level (which
    # learns fast) gets a direct gradient path from the loss.
    coarse_head: bool = True


class AttentionUNet3D(nn.Module):
    """Encoder/decoder 3-D U-Net, attention gates on every skip, BN+ReLU, sigmoid output (in the graph).

    Fully convolutional with len(widths)-1 poolings: any input edge divisible by 2**(len(widths)-1) works,
    so training can use sub-crops of the 128^3 ROI.
    """

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        self.cfg = cfg or UNetConfig()
        w, light = self.cfg.widths, self.cfg.light_levels

        def block(level: int, cin: int, cout: int) -> nn.Module:
            return conv_bn_relu(cin, cout) if level < light else DoubleConv(cin, cout)

        self.enc = nn.ModuleList([block(0, self.cfg.in_channels, w[0])] +
                                 [block(i, w[i - 1], w[i]) for i in range(1, len(w))])
        self.up = nn.ModuleList([nn.ConvTranspose3d(w[i], w[i - 1], 2, stride=2) for i in range(len(w) - 1, 0, -1)])
        self.att = nn.ModuleList([AttentionGate(w[i - 1], w[i - 1], max(4, w[i - 1] // 2))
                                  for i in range(len(w) - 1, 0, -1)])
        self.dec = nn.ModuleList([block(i - 1, 2 * w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1)])
        self.head = nn.Conv3d(w[0], 1, 1)
        self.head_coarse = nn.Conv3d(w[1], 1, 1) if self.cfg.coarse_head and len(w) > 1 else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        x = skips.pop()
        coarse = None
        for up, att, dec in zip(self.up, self.att, self.dec):
            if len(skips) == 1 and self.head_coarse is not None:
                coarse = self.head_coarse(x)  # x is the half-resolution decoder output here
            g = up(x)
            s = skips.pop()
            x = dec(torch.cat([att(s, g), g], dim=1))
        out = self.head(x)
        if coarse is not None:
            out = out + F.interpolate(coarse, scale_factor=2.0, mode="trilinear", align_corners=False)
        return out

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(roi))


# ----------------------------------------------------------------------------------------------------- labeller
class BasicBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.b1 = nn.BatchNorm3d(cout)
        self.c2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm3d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)), inplace=True)
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)), inplace=True)


class EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer written out (torch's fused eval fast path does not export to ONNX)."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.scale = float(self.dh) ** -0.5  # a Python constant: no shape arithmetic in the graph
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.n1(x)).unflatten(-1, (3, self.heads, self.dh)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        y = (att @ v).transpose(1, 2).flatten(2)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.n2(x)))


@dataclass
class LabellerConfig:
    in_channels: int = 1
    num_classes: int = 24
    widths: list[int] = field(default_factory=lambda: [16, 32, 48, 64])
    blocks: list[int] = field(default_factory=lambda: [3, 4, 6, 3])  # ResNet34's stage depths
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    input_shape: list[int] = field(default_factory=lambda: [48, 96, 96])


class ResNetTransformer3D(nn.Module):
    """3-D ResNet34-style feature extractor -> tokens of the last feature map -> Transformer encoder -> linear."""

    def __init__(self, cfg: LabellerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LabellerConfig()
        w = cfg.widths
        # Stem: stride-2 conv + stride-2 max-pool, as ResNet, but 3^3 kernels (a 7^3 stem would dominate the cost).
        self.stem = nn.Sequential(nn.Conv3d(cfg.in_channels, w[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm3d(w[0]), nn.ReLU(inplace=True), nn.MaxPool3d(3, stride=2, padding=1))
        stages, cin = [], w[0]
        for s, (cout, n) in enumerate(zip(w, cfg.blocks)):
            blocks = [BasicBlock3d(cin, cout, stride=1 if s == 0 else 2)]
            blocks += [BasicBlock3d(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        d = w[-1]
        self.stem.eval(), self.stages.eval()  # probe the token count (BN in train mode rejects a 1-voxel map)
        with torch.no_grad():
            n_tok = self.stages(self.stem(torch.zeros(1, cfg.in_channels, *cfg.input_shape))).flatten(2).shape[-1]
        self.stem.train(), self.stages.train()
        self.pos = nn.Parameter(torch.zeros(1, n_tok + 1, d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.encoder = nn.Sequential(*[EncoderLayer(d, cfg.heads, 2 * d, cfg.dropout) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stages(self.stem(x))  # [N, d, D', H', W']
        tok = f.flatten(2).transpose(1, 2)  # [N, T, d]
        tok = torch.cat([self.cls.expand(tok.shape[0], -1, -1), tok], dim=1) + self.pos
        z = self.encoder(tok)
        return self.head(self.norm(z[:, 0]))


def config_dict(cfg) -> dict:
    return asdict(cfg)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs (multiply-add = 2) for one sample, via torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(example)
    model.train(was)
    return int(fc.get_total_flops())
