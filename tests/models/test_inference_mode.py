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
