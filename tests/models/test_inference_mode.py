"""Inference mode: frozen BatchNorm folded into the preceding convolutions gives the model's own outputs.

The expected values come from the unfolded model, whose BatchNorm is torch's ``F.batch_norm`` in eval mode
(``(x - running_mean) / sqrt(running_var + eps) * weight + bias``), not from the folding formula.
"""

from __future__ import annotations

import torch
from test_solov2_model import tiny_model
from torch import nn

from solo_npu.models.backbones.resnet import FrozenBatchNorm2d, ResNet
from solo_npu.models.inference import fold_frozen_norms, prepare_for_inference


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.num_features
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.3)


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())


def test_fold_matches_batchnorm_and_frozen_batchnorm_for_both_block_types():
    for depth, norm, expected in ((18, "bn", 1 + 2 * 8 + 3), (50, "frozen_bn", 1 + 3 * 16 + 4)):
        torch.manual_seed(0)
        net = ResNet(depth=depth, norm=norm, frozen_stages=-1, base_channels=8).eval()
        _randomise_norms(net)
        x = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            ref = net(x)
            assert fold_frozen_norms(net) == expected
            out = net(x)
        assert _norms(net) == 0
        for r, o in zip(ref, out):  # float32 rounding, relative to the feature magnitude
            assert (o - r).abs().max() <= 1e-5 * r.abs().max(), (depth, (o - r).abs().max(), r.abs().max())


def test_batchnorm_that_still_trains_is_not_folded():
    net = ResNet(depth=18, norm="bn", norm_eval=False, base_channels=8).train()
    assert fold_frozen_norms(net) == 0 and _norms(net) == 1 + 2 * 8 + 3


def test_tiny_solov2_export_outputs_unchanged_in_inference_mode():
    model = tiny_model()
    _randomise_norms(model.backbone if hasattr(model, "backbone") else model)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ref = model.export_forward(x)
        prepare_for_inference(model, channels_last=True)
        out = model.export_forward(x)
    assert _norms(model) == 0
    masks_ref, labels_ref, scores_ref = ref
    masks, labels, scores = out
    assert torch.equal(labels, labels_ref)
    torch.testing.assert_close(scores, scores_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masks, masks_ref, rtol=1e-4, atol=1e-4)


def _conv_kinds(model: nn.Module) -> tuple[int, int]:
    from solo_npu.runtime.onednn import PointwiseConv2d

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(isinstance(m, PointwiseConv2d) for m in convs), len(convs)


def test_channels_last_runs_pointwise_convolutions_on_onednn_with_the_same_outputs():
    """1x1 stride-1 convolutions go to oneDNN (torch sends them to its GEMM path at batch 1 on one thread);
    the reference is the unprepared model, through ``nn.Conv2d``."""
    from solo_npu.runtime.onednn import PointwiseConv2d

    torch.manual_seed(0)
    net = ResNet(depth=50, norm="frozen_bn", frozen_stages=-1, base_channels=8).eval()
    _randomise_norms(net)
    plain = prepare_for_inference(ResNet(depth=50, norm="frozen_bn", frozen_stages=-1, base_channels=8))
    x = torch.randn(1, 3, 64, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            ref = net(x)
            prepare_for_inference(net, channels_last=True)
            out = net(x)
    finally:
        torch.set_num_threads(threads)
    pointwise, total = _conv_kinds(net)
    # Bottleneck conv1 and conv3 of 16 blocks; the downsample 1x1s of stages 2-4 have stride 2.
    expected = 2 * 16 + 1 if torch.backends.mkldnn.is_available() else 0  # + stage 1's stride-1 downsample
    assert pointwise == expected and total == 53
    assert list(net.state_dict()) == list(plain.state_dict())  # the same names as plain inference mode
    for r, o in zip(ref, out):
        assert (o - r).abs().max() <= 1e-5 * r.abs().max()
    conv = next(m for m in net.modules() if isinstance(m, PointwiseConv2d))
    with torch.no_grad():
        traced = torch.jit.trace(conv, torch.randn(1, conv.in_channels, 4, 4))
    assert "mkldnn_convolution" not in str(traced.graph) and "_convolution" in str(traced.graph)
    y = torch.randn(1, conv.in_channels, 4, 4, requires_grad=True)
    conv(y).sum().backward()  # with autograd: nn.Conv2d's own path
    assert y.grad is not None and y.grad.shape == y.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps its precision
        assert conv(torch.randn(1, conv.in_channels, 4, 4)).dtype == torch.bfloat16
    with torch.no_grad():
        assert conv(torch.randn(1, conv.in_channels, 4, 4)).dtype == torch.float32


def test_inference_mode_without_channels_last_keeps_plain_convolutions():
    net = ResNet(depth=50, norm="frozen_bn", base_channels=8)
    prepare_for_inference(net)
    assert _conv_kinds(net)[0] == 0


def test_pointwise_convolution_compiles_to_an_ordinary_convolution():
    """Under torch.compile the oneDNN call is not traced (dynamo had failed on it); the compiled layer takes
    nn.Conv2d's path and gives the eager result."""
    from solo_npu.runtime.onednn import PointwiseConv2d

    torch.manual_seed(0)
    conv = PointwiseConv2d.from_conv(nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 8, 6, 10).contiguous(memory_format=torch.channels_last)
    seen = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # records the graph, runs it eagerly
        seen.append(str(gm.graph))
        return gm.forward

    with torch.no_grad():
        ref = conv(x)
        out = torch.compile(conv, backend=backend)(x)
    assert seen and "mkldnn_convolution" not in seen[0] and "conv2d" in seen[0]
    assert (out - ref).abs().max() <= 1e-6
