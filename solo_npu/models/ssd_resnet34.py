"""SSD-ResNet34, the MLPerf training v0.7 single-stage detector (300x300), inference only.

Faithful to NVIDIA's MLPerf v0.7 PyTorch submission (the model of the Ascend
ModelZoo SSD-ResNet34 offline inference guide (310/310P), checkpoint ``iter_183250.pt``;
:meth:`SSDResNet34.convert_state_dict` reads it).

Architecture: ResNet-34 stem + ``layer1..layer3`` with ``layer3`` at stride 1 (38x38 features at 300x300,
256 channels) -> five extra blocks (1x1 conv + ReLU, 3x3 conv + ReLU; 256/256/128/128/128 middle
channels, strides 2/2/2/1/1) giving 19x19x512, 10x10x512, 5x5x256, 3x3x256, 1x1x256 -> per level a 3x3
box conv (``4 * A``) and class conv (``81 * A``), A = 4, 6, 6, 6, 4, 4 priors. Outputs are laid out
like the reference: ``ploc [B, 4, 8732]`` and ``plabel [B, 81, 8732]`` (background class 0), prior
index = level offset + shape * H * W + position.

Pre-processing (the guide's ``ssd_preprocess.py``, Ascend/ModelZoo-PyTorch): RGB, torchvision
``Resize((300, 300))`` on the PIL image, i.e. Pillow bilinear ignoring the aspect ratio, antialiased when it
shrinks (:attr:`SSDResNet34.stretch_interpolation`, :func:`solo_npu.deploy.adapters.pil_bilinear_resize`),
``/255``, normalise with ImageNet mean ``[0.485, 0.456, 0.406]`` and std ``[0.229, 0.224, 0.225]``
(i.e. mean ``[123.675, 116.28, 103.53]`` and std ``[58.395, 57.12, 57.375]`` on 0..255 pixels). No padding.
The resize happens before the graph: the exported model is the same whichever resampling feeds it.

Post-processing (MLPerf ``Encoder.decode_batch(ploc, plabel, 0.5, 200)``): boxes decoded against the 8732
default boxes with ``scale_xy = 0.1`` / ``scale_wh = 0.2``; softmax over 81 classes; per foreground class
the candidates above 0.05, at most 200, greedy NMS at IoU 0.5; the best 200 overall; boxes scaled to the
original image. :meth:`SSDResNet34.export_forward` is the raw static graph (the guide's ONNX outputs);
:func:`ssd_postprocess` is the host half used by :meth:`SSDResNet34.predict` and every deploy backend.

Training is not implemented: this framework uses SSD-ResNet34 as a deployment model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from solo_npu.models.backbones.resnet import ResNet
from solo_npu.models.contract import Preprocessing, as_float_tensor
from solo_npu.models.ops.box_coding import decode_center_size
from solo_npu.models.ops.boxes import multiclass_nms
from solo_npu.models.ops.geometry import boxes_to_original
from solo_npu.models.ops.priors import SSD300_SCALES, ssd_default_boxes

__all__ = ["ResNet34Trunk", "SSDResNet34", "build_ssd_resnet34", "default_boxes_for", "ssd_postprocess"]

SSD_OUTPUT_NAMES = ("ploc", "plabel")
NUM_DEFAULTS = (4, 6, 6, 6, 4, 4)
# Reference trunk module indices -> ours: NVIDIA's ``model.{i}`` and the ``feature_extractor`` variant.
_NVIDIA_TRUNK = {"0": "conv1", "1": "bn1", "3": "layer1", "4": "layer2", "5": "layer3"}
_FEATURE_EXTRACTOR_TRUNK = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}


class ResNet34Trunk(nn.Module):
    """ResNet stem and ``layer1..layer3`` with ``layer3`` at stride 1 (torchvision names, frozen BN)."""

    def __init__(self, depth: int = 34) -> None:
        super().__init__()
        rn = ResNet(depth=depth, style="pytorch", norm="frozen_bn", frozen_stages=-1, out_indices=(2,))
        rn.set_stage_stride(2, 1)
        self.conv1, self.bn1, self.relu, self.maxpool = rn.conv1, rn.bn1, rn.relu, rn.maxpool
        self.layer1, self.layer2, self.layer3 = rn.layer1, rn.layer2, rn.layer3
        self.out_channels = rn.stage_channels[2]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def _ceil_half(x: int) -> int:
    return (x + 1) // 2


def ssd_feature_sizes(size: int) -> list[int]:
    """Side of the six detection maps for a square input (38, 19, 10, 5, 3, 1 at 300)."""
    s = _ceil_half(_ceil_half(_ceil_half(size)))  # conv1, max-pool, layer2
    sizes = [s]
    for _ in range(3):
        sizes.append(_ceil_half(sizes[-1]))
    sizes += [sizes[-1] - 2, sizes[-1] - 4]
    return sizes


def default_boxes_for(canvas: Sequence[int]) -> Tensor:
    """Default boxes for a square ``canvas``: the MLPerf SSD300 set at 300; at other sizes one box set per cell
    of each level's real map (step ``size / map side``) with the scales scaled by ``size / 300``.

    MLPerf's steps (8, 16, 32, 64, 100, 300) are defined for 300 only: its last two levels come from unpadded 3x3
    convolutions, so their maps (3 and 1 at 300) do not scale with the input (8 and 6 at 600), and those steps
    scaled by ``size / 300`` would put most of their box centres outside the image (clamped to its edge)."""
    h, w = int(canvas[0]), int(canvas[1])
    if h != w:
        raise ValueError(f"SSD default boxes need a square input, got {h}x{w}")
    if h == 300:
        return ssd_default_boxes()
    sizes = ssd_feature_sizes(h)
    if min(sizes) < 1:
        raise ValueError(f"input {h}x{w} is too small for SSD's six detection levels")
    return ssd_default_boxes(h, sizes, steps=[h / side for side in sizes],
                             scales=[s * h / 300 for s in SSD300_SCALES])


def _extra_block(cin: int, mid: int, cout: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 3, stride=stride, padding=padding), nn.ReLU(inplace=True))


class SSDResNet34(nn.Module):
    """SSD300 with a ResNet-34 trunk.

    Args:
        backbone: the trunk (38x38 output at 300x300).
        out_channels: channels of the six detection levels (first = trunk output).
        mid_channels: middle channels of the five extra blocks.
        num_classes: foreground classes (the head predicts ``num_classes + 1``).
        fig_size: input side; the default boxes are the MLPerf SSD300 ones at 300 (:func:`default_boxes_for`).
    """

    # The model's facts for deployment and checkpoint loading (see solo_npu/models/contract.py).
    display_name = "SSD-ResNet34"
    trainable = False  # no training losses: forward raises NotImplementedError in training mode
    output_names = SSD_OUTPUT_NAMES
    iou_types = ("bbox",)

    # MLPerf eval transform: stretch to the input, RGB, ImageNet mean / std; the image fills the input
    preprocessing = Preprocessing("stretch", "pytorch", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                                  pad_position="top_left")
    # the stretch's resampling (solo_npu.deploy.adapters.StretchResize): Pillow bilinear on the uint8 image, as
    # torchvision's Resize((300, 300)) in the guide's ssd_preprocess.py (cv2.INTER_LINEAR does not antialias)
    stretch_interpolation = "pil_bilinear"
    checkpoint_layouts = ("ssd_resnet34",)

    @property
    def score_floor(self) -> float:
        return self.score_thr

    @property
    def max_detections(self) -> int:
        return self.max_output

    def __init__(self, backbone: nn.Module, out_channels: Sequence[int] = (256, 512, 512, 256, 256, 256),
                 mid_channels: Sequence[int] = (256, 256, 128, 128, 128), num_classes: int = 80,
                 num_defaults: Sequence[int] = NUM_DEFAULTS, fig_size: int = 300, score_thr: float = 0.05,
                 iou_threshold: float = 0.5, max_per_class: int = 200, max_output: int = 200) -> None:
        super().__init__()
        self.backbone = backbone
        strides, paddings = (2, 2, 2, 1, 1), (1, 1, 1, 0, 0)
        self.additional_blocks = nn.ModuleList(
            _extra_block(cin, mid, cout, s, p)
            for cin, mid, cout, s, p in zip(out_channels[:-1], mid_channels, out_channels[1:], strides, paddings))
        self.num_classes = num_classes
        self.label_num = num_classes + 1
        self.num_defaults = tuple(num_defaults)
        self.loc = nn.ModuleList(nn.Conv2d(c, nd * 4, 3, padding=1) for c, nd in zip(out_channels, num_defaults))
        self.conf = nn.ModuleList(nn.Conv2d(c, nd * self.label_num, 3, padding=1)
                                  for c, nd in zip(out_channels, num_defaults))
        self.fig_size = fig_size
        self.score_thr = score_thr
        self.iou_threshold = iou_threshold
        self.max_per_class = max_per_class
        self.max_output = max_output
        self.register_buffer("dboxes", default_boxes_for((fig_size, fig_size)), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in [*self.additional_blocks.modules(), *self.loc, *self.conf]:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor, targets: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """Inference only: returns :meth:`export_forward`. Training raises ``NotImplementedError``."""
        if targets is not None or self.training:
            raise NotImplementedError("SSD-ResNet34 is inference-only in solo-npu (no training losses)")
        return self.export_forward(images)

    def export_forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``ploc [B, 4, P]`` box offsets and ``plabel [B, C+1, P]`` class logits (P = 8732 at 300x300)."""
        x = self.backbone(images)
        feats = [x]
        for block in self.additional_blocks:
            x = block(x)
            feats.append(x)
        b = images.shape[0]
        ploc = torch.cat([loc(f).reshape(b, 4, -1) for loc, f in zip(self.loc, feats)], 2)
        plabel = torch.cat([conf(f).reshape(b, self.label_num, -1) for conf, f in zip(self.conf, feats)], 2)
        return ploc, plabel

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Per-image ``boxes``, ``labels``, ``scores`` in original-image coordinates."""
        ploc, plabel = self.export_forward(images)
        dboxes = self.default_boxes(images.shape[-2:])
        return [ssd_postprocess(ploc[i], plabel[i], meta, dboxes, self.score_thr, self.iou_threshold,
                                self.max_per_class, self.max_output) for i, meta in enumerate(metas)]

    def check_input_shape(self, height: int, width: int) -> None:
        """The default boxes and the released weights are made for a ``fig_size`` x ``fig_size`` input (MLPerf's
        SSD300 and the Ascend ModelZoo SSD-ResNet34 guide: 300x300, stretched): another static input is refused
        unless the model is built for it (``model.fig_size``), where the boxes follow that input's maps."""
        if (height, width) == (self.fig_size, self.fig_size):
            return
        if height != width:
            raise ValueError(f"SSD-ResNet34 takes a square input (model.fig_size={self.fig_size}), "
                             f"not {height}x{width}")
        raise ValueError(f"SSD-ResNet34 is built for a {self.fig_size}x{self.fig_size} input (model.fig_size, the "
                         f"size its default boxes and MLPerf's weights are made for): a {height}x{width} input needs "
                         f"model.fig_size={height} as well")

    def default_boxes(self, canvas: Sequence[int]) -> Tensor:
        """The default boxes of a ``canvas`` input: the held SSD300 set at ``fig_size``, else computed."""
        size = (int(canvas[0]), int(canvas[1]))
        return self.dboxes if size == (self.fig_size, self.fig_size) else default_boxes_for(size).to(self.dboxes)

    def postprocess(self, outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Tensor]:
        """:func:`ssd_postprocess` of one image's ``ploc`` / ``plabel`` with this model's boxes and thresholds."""
        ploc = as_float_tensor(outputs["ploc"])
        dboxes = self.default_boxes(meta.get("canvas", meta["img_shape"])).to(ploc.device)
        return ssd_postprocess(ploc, as_float_tensor(outputs["plabel"]), meta, dboxes, self.score_thr,
                               self.iou_threshold, self.max_per_class, self.max_output)

    def convert_state_dict(self, state: Mapping[str, Tensor], layout: str = "ssd_resnet34",
                           num_classes: int | None = None) -> dict[str, Tensor]:
        """An MLPerf SSD-ResNet34 state dict (``ssd_resnet34``) in this model's names: the trunk
        ``model.{0,1,3,4,5}`` (or ``feature_extractor.feature_extractor.{0,1,4,5,6}``) -> ``backbone.*``;
        each fused ``mbox.i`` conv (class channels first, then box channels) split into ``conf.i`` and
        ``loc.i``.

        Raises:
            CheckpointError: an unknown trunk index, or an ``mbox`` conv of another width.
        """
        from solo_npu.checkpoints.io import CheckpointError

        if layout != "ssd_resnet34":
            raise ValueError(f"SSD-ResNet34 reads 'ssd_resnet34' (MLPerf) checkpoints, not {layout!r}")
        label_num = self.label_num if num_classes is None else num_classes + 1
        out = {}
        for key, value in state.items():
            m = re.match(r"(model|feature_extractor\.feature_extractor)\.(\d+)\.(.*)", key)
            if m:
                table = _NVIDIA_TRUNK if m.group(1) == "model" else _FEATURE_EXTRACTOR_TRUNK
                if m.group(2) not in table:
                    raise CheckpointError(f"unexpected SSD trunk key {key!r}")
                out[f"backbone.{table[m.group(2)]}.{m.group(3)}"] = value
                continue
            m = re.match(r"mbox\.(\d+)\.(weight|bias)", key)
            if m:
                level, kind = int(m.group(1)), m.group(2)
                nd = self.num_defaults[level]
                n_conf, n_loc = nd * label_num, nd * 4
                if value.shape[0] != n_conf + n_loc:
                    raise CheckpointError(f"{key} has {value.shape[0]} output channels, expected {n_conf + n_loc} "
                                          f"({nd} priors x ({label_num} classes + 4))")
                out[f"conf.{level}.{kind}"] = value[:n_conf].clone()
                out[f"loc.{level}.{kind}"] = value[n_conf:].clone()
                continue
            out[key] = value
        return out


def ssd_postprocess(ploc: Tensor, plabel: Tensor, meta: Mapping[str, Any], dboxes: Tensor | None = None,
                    score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_class: int = 200,
                    max_output: int = 200) -> dict[str, Tensor]:
    """Host half of SSD inference for one image.

    Args:
        ploc: ``[4, P]``; plabel: ``[C+1, P]`` (one image of :meth:`SSDResNet34.export_forward`).
        meta: image meta dict; dboxes: ``[P, 4]`` default boxes (SSD300 ones when omitted).
    """
    ploc, plabel = torch.as_tensor(ploc).float(), torch.as_tensor(plabel).float()
    if dboxes is None:
        dboxes = ssd_default_boxes()
    if dboxes.shape[0] != ploc.shape[1]:
        raise ValueError(f"{ploc.shape[1]} predictions but {dboxes.shape[0]} default boxes")
    boxes = decode_center_size(ploc.t(), dboxes.to(ploc), (0.1, 0.2))
    scores = plabel.t().softmax(dim=-1)[:, 1:]
    kept, kept_scores, labels = multiclass_nms(boxes, scores, score_thr, iou_threshold, max_output,
                                               max_per_class=max_per_class, inclusive=True)
    canvas_h, canvas_w = meta.get("canvas", meta["img_shape"])
    kept = kept * kept.new_tensor([canvas_w, canvas_h, canvas_w, canvas_h])
    # MLPerf scales boxes to the image without clipping them
    return {"boxes": boxes_to_original(kept, meta, clip=False), "labels": labels.long(), "scores": kept_scores}


def build_ssd_resnet34(num_classes: int = 80, name: str = "ssd_resnet34", depth: int = 34,
                       out_channels: Sequence[int] = (256, 512, 512, 256, 256, 256),
                       mid_channels: Sequence[int] = (256, 256, 128, 128, 128), fig_size: int = 300,
                       score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_class: int = 200,
                       max_output: int = 200) -> SSDResNet34:
    """SSD-ResNet34 (the SSD-ResNet34 guide's model by default). ``depth=18`` and smaller extra-block widths
    for tests; the trunk's output channels must equal ``out_channels[0]``. ``name`` is the config's label
    (``model.name``)."""
    backbone = ResNet34Trunk(depth)
    if backbone.out_channels != out_channels[0]:
        raise ValueError(f"trunk gives {backbone.out_channels} channels but out_channels[0]={out_channels[0]}")
    model = SSDResNet34(backbone, out_channels, mid_channels, num_classes, NUM_DEFAULTS, fig_size, score_thr,
                        iou_threshold, max_per_class, max_output)
    model.name = name
    return model.eval()
