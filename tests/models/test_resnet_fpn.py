"""ResNet and FPN: state-dict layout, strides, freezing, pyramid shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from solo_npu.models import FPN, FrozenBatchNorm2d, ResNet, load_torchvision_weights


def torchvision_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvision ResNet state dict, written out from the torchvision layout."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{s}"] = (c,)

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for li, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            if bottleneck:
                shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn1", planes)
                bn(f"{p}.bn2", planes)
                bn(f"{p}.bn3", planes * 4)
            else:
                shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn1", planes)
                bn(f"{p}.bn2", planes)
            if b == 0 and (li > 1 or cin != planes * exp):
                shapes[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            cin = planes * exp
    shapes["fc.weight"] = (1000, 512 * exp)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_torchvision_resnet50_layout_loads_strict(tmp_path, norm):
    shapes = torchvision_resnet_shapes(50)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = ResNet(50, norm=norm)
    missing, unexpected = load_torchvision_weights(model, path)
    assert missing == [] and unexpected == []
    got = model.state_dict()
    assert torch.equal(got["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    assert torch.equal(got["layer4.0.downsample.1.running_var"], state["layer4.0.downsample.1.running_var"])



@pytest.mark.parametrize("content", [[torch.zeros(3)], torch.zeros(3), {"epoch": 3}],
                         ids=["list", "tensor", "no tensors"])
def test_a_file_that_is_no_state_dict_is_one_line_with_its_path(tmp_path, content):
    """ImageNet init from a file that holds no state dict: one CheckpointError naming the file, also through
    the SOLOv2 builder (whose shape-mismatch message would otherwise call it a ResNet of another depth)."""
    from solo_npu.checkpoints import CheckpointError
    from solo_npu.models.solov2 import build_solov2

    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="weights.pth: not a state dict of tensors") as err:
        load_torchvision_weights(ResNet(18), path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="weights.pth: not a state dict of tensors"):
        build_solov2(num_classes=3, backbone={"depth": 18, "base_channels": 16}, neck={"out_channels": 32},
                     head={"in_channels": 32, "feat_channels": 32, "stacked_convs": 1}, pretrained=str(path))

def test_resnet18_layout_matches_torchvision():
    expected = {k: v for k, v in torchvision_resnet_shapes(18).items() if not k.startswith("fc.")}
    got = {k: tuple(v.shape) for k, v in ResNet(18, norm="frozen_bn").state_dict().items()}
    assert got == expected


def test_frozen_bn_matches_batchnorm_eval():
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(FrozenBatchNorm2d.from_batchnorm(bn)(x), bn(x), rtol=1e-5, atol=1e-5)


def test_resnet_strides_style_and_stage_stride():
    x = torch.randn(1, 3, 64, 96)
    feats = ResNet(18, out_indices=(0, 1, 2, 3)).eval()(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    caffe = ResNet(50, style="caffe")
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    pyt = ResNet(50, style="pytorch")
    assert pyt.layer2[0].conv1.stride == (1, 1) and pyt.layer2[0].conv2.stride == (2, 2)
    r34 = ResNet(34, out_indices=(1, 2))
    r34.set_stage_stride(2, 1)
    f2, f3 = r34.eval()(x)
    assert f2.shape[-2:] == f3.shape[-2:] == (8, 12)


def test_frozen_stages_and_norm_eval():
    model = ResNet(18, frozen_stages=1, norm="bn", norm_eval=True).train()
    assert not model.conv1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    model = ResNet(18, frozen_stages=-1, norm="bn", norm_eval=False).train()
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)


def test_fpn_mmdet_names_and_shapes():
    fpn = FPN([8, 16, 32, 64], 16, num_outs=5)
    names = sorted(fpn.state_dict())
    assert names == sorted([f"lateral_convs.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")]
                           + [f"fpn_convs.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")])
    feats = [torch.randn(2, c, 32 // 2**i, 48 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 32, 48), (2, 16, 16, 24), (2, 16, 8, 12), (2, 16, 4, 6),
                                              (2, 16, 2, 3)]
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])
    # Reference top-down pathway for the finest level.
    lat = [fpn.lateral_convs[i](feats[i]) for i in range(4)]
    top = lat[3]
    for i in (2, 1, 0):
        top = lat[i] + torch.repeat_interleave(torch.repeat_interleave(top, 2, -1), 2, -2)
    torch.testing.assert_close(outs[0], fpn.fpn_convs[0](top))


@pytest.mark.parametrize("mode", ["on_input", "on_lateral", "on_output"])
def test_fpn_extra_convs(mode):
    fpn = FPN([8, 16, 32], 16, num_outs=5, start_level=1, add_extra_convs=mode, relu_before_extra_convs=True,
              norm="gn", num_groups=4)
    assert len(fpn.lateral_convs) == 2 and len(fpn.fpn_convs) == 5
    assert fpn.fpn_convs[2].conv.in_channels == (32 if mode == "on_input" else 16)
    assert "fpn_convs.4.gn.weight" in fpn.state_dict() and fpn.fpn_convs[4].conv.bias is None
    feats = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32])]
    outs = fpn(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1]


def test_fpn_with_lateral_relu_trains_and_infers_alike():
    """The top-down sums are written in place only without autograd: with ``act=True`` the lateral ReLU
    keeps its output for backward, so an in-place sum there would break training."""
    from solo_npu.models.necks.fpn import FPN

    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], 8, 3, act=True, norm="gn", num_groups=4)
    feats = [torch.randn(1, 8, 16, 16, requires_grad=True), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    outs = fpn(feats)
    sum(o.sum() for o in outs).backward()
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    with torch.no_grad():
        for a, b in zip(outs, fpn(feats)):
            assert torch.equal(a.detach(), b)
