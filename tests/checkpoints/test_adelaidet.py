"""AdelaiDet SOLOv2 checkpoints (``SOLOv2_R50_3x.pth``): detectron2 names, caffe-style ResNet, BGR input.

The reference below is written from AdelaiDet's ``adet/modeling/solov2/solov2.py`` (SOLOv2InsHead,
SOLOv2MaskHead, ``split_feats``) and detectron2's ``modeling/backbone/resnet.py`` (BasicStem, BottleneckBlock
with ``stride_in_1x1``, stages ``res2``..``res5``), ``modeling/backbone/fpn.py`` (``fpn_lateral{stage}``,
``fpn_output{stage}``, nearest x2 top-down, LastLevelMaxPool) and ``layers/batch_norm.py`` (FrozenBatchNorm2d:
four buffers, eps 1e-5), with the defaults of ``adet/config/defaults.py`` (NUM_GRIDS 40/36/24/16/12, 512-channel
towers of 4 convs with GroupNorm 32, 256 kernels, 128 mask channels, 256 masks). Its state dict has the names a
detectron2 ``Checkpointer`` writes under ``"model"``; the SOLOv2 here, loaded from it, must compute the same heads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from solo_npu.checkpoints import CheckpointError, load_checkpoint
from solo_npu.checkpoints.convert import load_model_weights, main
from solo_npu.models import build_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
CAFFE = {"style": "caffe", "mean": [103.53, 116.28, 123.675], "std": [1.0, 1.0, 1.0]}
PYTORCH = {"style": "pytorch", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


class FrozenBN(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        for name, value in (("weight", torch.ones(n)), ("bias", torch.zeros(n)), ("running_mean", torch.zeros(n)),
                            ("running_var", torch.ones(n))):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale.view(1, -1, 1, 1) + (self.bias - self.running_mean * scale).view(1, -1, 1, 1)


class D2Conv(nn.Conv2d):
    """detectron2.layers.Conv2d: the convolution, then its ``norm``."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x):
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cmid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut = D2Conv(cin, cout, 1, stride=stride, bias=False, norm=FrozenBN(cout)) if cin != cout else None
        # STRIDE_IN_1X1 (detectron2's default, the MSRA weights): the stride on the first 1x1 conv
        self.conv1 = D2Conv(cin, cmid, 1, stride=stride, bias=False, norm=FrozenBN(cmid))
        self.conv2 = D2Conv(cmid, cmid, 3, stride=1, padding=1, bias=False, norm=FrozenBN(cmid))
        self.conv3 = D2Conv(cmid, cout, 1, bias=False, norm=FrozenBN(cout))

    def forward(self, x):
        out = self.conv3(F.relu_(self.conv2(F.relu_(self.conv1(x)))))
        return F.relu_(out + (self.shortcut(x) if self.shortcut is not None else x))


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = D2Conv(3, 64, 7, stride=2, padding=3, bias=False, norm=FrozenBN(64))

    def forward(self, x):
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Stem()
        cin = 64
        for stage, (n, cmid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, cmid, cmid * 4, 2 if b == 0 and stage > 2 else 1))
                cin = cmid * 4
            self.add_module(f"res{stage}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.stem(x)
        out = []
        for stage in range(2, 6):
            x = getattr(self, f"res{stage}")(x)
            out.append(x)
        return out


class FPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bottom_up = ResNet50()
        for stage, cin in zip(range(2, 6), (256, 512, 1024, 2048)):
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(cin, 256, 1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(256, 256, 3, padding=1))

    def forward(self, x):
        res = self.bottom_up(x)
        prev = self.fpn_lateral5(res[3])
        outs = [self.fpn_output5(prev)]
        for stage in (4, 3, 2):
            prev = getattr(self, f"fpn_lateral{stage}")(res[stage - 2]) + F.interpolate(prev, scale_factor=2.0,
                                                                                         mode="nearest")
            outs.insert(0, getattr(self, f"fpn_output{stage}")(prev))
        return [*outs, F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0)]  # p2..p6


def coord(x):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, x.shape[-2]), torch.linspace(-1, 1, x.shape[-1]), indexing="ij")
    return torch.cat([x, xs.expand(x.shape[0], 1, -1, -1), ys.expand(x.shape[0], 1, -1, -1)], 1)


class InsHead(nn.Module):
    grids = (40, 36, 24, 16, 12)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        for head, first in (("cate", 256), ("kernel", 258)):
            tower = []
            for i in range(4):
                tower += [nn.Conv2d(first if i == 0 else 512, 512, 3, padding=1, bias=False), nn.GroupNorm(32, 512),
                          nn.ReLU(inplace=True)]
            self.add_module(f"{head}_tower", nn.Sequential(*tower))
        self.cate_pred = nn.Conv2d(512, num_classes, 3, padding=1)
        self.kernel_pred = nn.Conv2d(512, 256, 3, padding=1)

    def forward(self, feats):
        cates, kernels = [], []
        for feat, grid in zip(feats, self.grids):
            kernel_feat = F.interpolate(coord(feat), size=grid, mode="bilinear")
            kernels.append(self.kernel_pred(self.kernel_tower(kernel_feat)))
            cates.append(self.cate_pred(self.cate_tower(kernel_feat[:, :-2])))
        return cates, kernels


class MaskHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for level in range(4):
            seq = nn.Sequential()
            for j in range(max(level, 1)):
                cin = (258 if level == 3 else 256) if j == 0 else 128
                seq.add_module(f"conv{j}", nn.Sequential(nn.Conv2d(cin, 128, 3, padding=1, bias=False),
                                                         nn.GroupNorm(32, 128), nn.ReLU(inplace=False)))
                if level > 0:
                    seq.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(seq)
        self.conv_pred = nn.Sequential(nn.Conv2d(128, 256, 1, bias=False), nn.GroupNorm(32, 256), nn.ReLU(inplace=True))

    def forward(self, feats):
        out = self.convs_all_levels[0](feats[0])
        for level in range(1, 4):
            out = out + self.convs_all_levels[level](coord(feats[level]) if level == 3 else feats[level])
        return self.conv_pred(out)


class AdelaiDetSOLOv2(nn.Module):
    def __init__(self, num_classes: int = 80) -> None:
        super().__init__()
        self.backbone = FPN()
        self.ins_head = InsHead(num_classes)
        self.mask_head = MaskHead()

    def forward(self, images):
        p = self.backbone(images)
        ins = [F.interpolate(p[0], scale_factor=0.5, mode="bilinear"), p[1], p[2], p[3],
               F.interpolate(p[4], size=p[3].shape[-2:], mode="bilinear")]
        cates, kernels = self.ins_head(ins)
        return cates, kernels, self.mask_head(p[:4])


@pytest.fixture(scope="module")
def adelaidet_file(tmp_path_factory) -> tuple[Path, AdelaiDetSOLOv2]:
    """A SOLOv2_R50_3x.pth as AdelaiDet's training writes it: random weights, statistics and GroupNorm affines."""
    torch.manual_seed(0)
    ref = AdelaiDetSOLOv2().eval()
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")) or t.dim() == 1:
                t.normal_(0.0, 0.1) if not name.endswith("weight") else t.uniform_(0.5, 1.5)
            else:
                t.normal_(0.0, (2.0 / (t[0].numel())) ** 0.5)
    path = tmp_path_factory.mktemp("adelaidet") / "SOLOv2_R50_3x.pth"
    torch.save({"model": ref.state_dict(), "iteration": 270000}, path)
    return path, ref


def r50(style: str = "caffe") -> nn.Module:
    cfg = OmegaConf.load(CONF / "solov2_r50.yaml")
    cfg.pretrained = "none"
    cfg.backbone.style = style
    return build_model(cfg, num_classes=80).eval()


def test_adelaidet_file_gives_adelaidets_heads(adelaidet_file):
    path, ref = adelaidet_file
    assert "backbone.bottom_up.res2.0.conv1.norm.running_var" in load_checkpoint(path)["model"]  # detectron2 names
    model = r50("caffe")
    report = load_model_weights(model, path, normalize=CAFFE)
    assert report["source"] == "adelaidet" and report["unexpected"] == []
    assert [k for k in report["missing"] if not k.endswith("num_batches_tracked")] == []
    images = torch.randn(1, 3, 128, 160) * 50
    with torch.no_grad():
        want, got = ref(images), model.forward_head(images)
    for level, (w, g) in enumerate(zip(want[0] + want[1] + [want[2]], got[0] + got[1] + [got[2]])):
        assert w.shape == g.shape, (level, w.shape, g.shape)
        scale = w.abs().max().item()
        assert (w - g).abs().max().item() <= 1e-4 * scale, (level, (w - g).abs().max().item(), scale)


def test_pytorch_style_backbone_or_rgb_input_is_refused(adelaidet_file, tmp_path):
    path, _ = adelaidet_file
    fix = "add model.backbone.style=caffe data.normalize.style=caffe 'data.normalize.mean=[103.53,116.28,123.675]'"
    with pytest.raises(CheckpointError, match="but this run has backbone.style=pytorch") as info:
        load_model_weights(r50("pytorch"), path, normalize=CAFFE)
    assert fix in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"normalize.style=pytorch, normalize.mean=\[123.675, 116.28, 103.53\]"):
        load_model_weights(r50("caffe"), path, normalize=PYTORCH)
    with pytest.raises(CheckpointError, match=r"this run has normalize.std=\[58.395"):
        load_model_weights(r50("caffe"), path, normalize={**CAFFE, "std": PYTORCH["std"]})
    load_model_weights(r50("caffe"), path, normalize={"style": "caffe", "mean": None, "std": None})  # caffe defaults
    with pytest.raises(CheckpointError, match="not mmdet ones: pass checkpoint_source=adelaidet"):
        load_model_weights(r50("caffe"), path, source="mmdet", normalize=CAFFE)


def test_converted_file_keeps_the_input_check(adelaidet_file, tmp_path, capsys):
    path, ref = adelaidet_file
    out = tmp_path / "solov2_r50_adelaidet.pth"
    assert main([str(path), str(out), "--model-config", str(CONF / "solov2_r50.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "adelaidet layout" in printed and "NOTE: AdelaiDet SOLOv2 weights expect a caffe-style ResNet" in printed
    converted = load_checkpoint(out)
    assert converted["meta"]["source"] == "adelaidet" and "backbone.layer1.0.downsample.1.running_var" in converted[
        "model"]
    with pytest.raises(CheckpointError, match="but this run has backbone.style=pytorch"):
        load_model_weights(r50("pytorch"), out, normalize=PYTORCH)
    model = r50("caffe")
    assert load_model_weights(model, out, normalize=CAFFE)["source"] == "ours"
    images = torch.randn(1, 3, 64, 96) * 50
    with torch.no_grad():
        assert torch.allclose(model.forward_head(images)[2], ref(images)[2], rtol=1e-4, atol=1e-4)


def test_train_and_deploy_commands_name_the_overrides(adelaidet_file, tmp_path):
    """The user's commands with the default (pytorch-style, RGB) config: one line naming the overrides; with them,
    evaluation reaches the class-count check (an 80-class file against the 3-class synthetic set)."""
    import os
    import subprocess
    import sys

    path, _ = adelaidet_file
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    data = ["data=synthetic", f"data.root={tmp_path / 'synthetic'}", "data.num_train=2", "data.num_val=2",
            "runtime.device=cpu"]
    fix = "add model.backbone.style=caffe data.normalize.style=caffe"
    commands = {
        "eval": [sys.executable, "train.py", "+experiment=eval", "model=solov2_r50", "model.pretrained=none",
                 f"checkpoint={path}", *data, f"hydra.run.dir={tmp_path / 'eval'}"],
        "deploy": [sys.executable, "deploy.py", "model=solov2", f"checkpoint={path}", "stages=[export]",
                   "deploy.input_shape=[128,160]", f"run_dir={tmp_path / 'deploy'}"],
    }
    for name, command in commands.items():
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
        assert "but this run has backbone.style=pytorch, normalize.style=pytorch" in last and fix in last, (name, last)
    caffe = ["model.backbone.style=caffe", "data.normalize.style=caffe"]  # mean and std follow the style
    proc = subprocess.run([*commands["eval"], *caffe], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "has a classifier for 80 classes but the model has 3" in last
    # the fix it names is one a run can take: data of the file's classes, or fine-tuning
    assert "use data of the file's 80 classes" in last and "+experiment=finetune" in last
