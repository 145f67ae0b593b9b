"""Per-sample transforms: keep-ratio resize, horizontal flip, normalisation, and canvas padding.

A sample is a dict with ``image`` (uint8 HxWx3 RGB), ``masks`` (uint8 NxHxW, optional), ``boxes``
(float32 Nx4, x1y1x2y2), ``labels`` (int64 N) and ``meta``. Randomness comes only from the
``np.random.Generator`` passed in, which the dataset seeds from (seed, epoch, index), so a sample is
the same whatever the worker count or the resume point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

PYTORCH_MEAN = (123.675, 116.28, 103.53)  # RGB
PYTORCH_STD = (58.395, 57.12, 57.375)
CAFFE_MEAN = (103.53, 116.28, 123.675)  # BGR
CAFFE_STD = (1.0, 1.0, 1.0)


def pixel_normalization(style: str = "pytorch", mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """(style, mean, std) that :class:`Normalize` applies for these settings: a null mean or std is the style's
    (pytorch: the ImageNet RGB mean and std; caffe: the BGR mean, std 1)."""
    if style not in ("pytorch", "caffe"):
        raise ValueError(f"normalize.style must be 'pytorch' or 'caffe', got {style!r}")
    default_mean, default_std = (PYTORCH_MEAN, PYTORCH_STD) if style == "pytorch" else (CAFFE_MEAN, CAFFE_STD)
    return (style, tuple(float(v) for v in (mean if mean is not None else default_mean)),
            tuple(float(v) for v in (std if std is not None else default_std)))


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """Keep-ratio target size so that the long side <= max(scale) and the short side <= min(scale); every side
    is at least 1 (a 1x3000 image at (1333, 800) would round its short side to 0, which cv2.resize refuses)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[N, H, W]`` masks with pixel-centre sampling (one gather, no loop)."""
    src_h, src_w = masks.shape[-2:]
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    return np.take(np.take(masks, cols, axis=2), rows, axis=1)  # C-ordered output whatever the input's order


class Resize:
    """Keep-ratio resize to ``scale`` = (long, short); with ``multiscale_short`` the short side is drawn from it."""

    def __init__(self, scale: Sequence[int], multiscale_short: Sequence[int] | None = None) -> None:
        if len(scale) != 2:
            raise ValueError(f"img_scale must be (long, short), got {scale}")
        self.scale = (int(max(scale)), int(min(scale)))
        self.multiscale_short = [int(s) for s in multiscale_short] if multiscale_short else None

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        long_edge, short_edge = self.scale
        if self.multiscale_short:
            short_edge = self.multiscale_short[int(rng.integers(len(self.multiscale_short)))]
        image = sample["image"]
        h0, w0 = image.shape[:2]
        h, w = rescale_size(h0, w0, (long_edge, short_edge))
        sample["image"] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        sy, sx = h / h0, w / w0
        if sample.get("masks") is not None:
            sample["masks"] = resize_nearest(sample["masks"], h, w)
        boxes = sample["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        sample["boxes"] = boxes
        sample["meta"].update(img_shape=(h, w), scale_factor=(sy, sx))
        return sample


class RandomFlip:
    """Horizontal flip with probability ``prob``; masks and boxes follow the image."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {prob}")
        self.prob = prob

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        flip = bool(rng.random() < self.prob)
        sample["meta"]["flip"] = flip
        if flip:
            sample["image"] = cv2.flip(sample["image"], 1)  # the same pixels as image[:, ::-1], in one C pass
            if sample.get("masks") is not None:
                sample["masks"] = np.ascontiguousarray(sample["masks"][:, :, ::-1])
            sample["boxes"] = flip_boxes(sample["boxes"], sample["image"].shape[1])
        return sample


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror x1y1x2y2 boxes in an image of the given width."""
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


class Normalize:
    """uint8 RGB HxWx3 -> float32 3xHxW tensor; ``style`` 'pytorch' keeps RGB, 'caffe' converts to BGR.

    ``mean``/``std`` are given in the channel order of the style (RGB for pytorch, BGR for caffe).
    """

    def __init__(self, style: str = "pytorch", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.style, mean, std = pixel_normalization(style, mean, std)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        # (x - mean) / std in float32, written channel by channel into a CHW tensor: the values of
        # ``(image.astype(float32) - mean) / std`` without its HWC float temporaries and transposed copy.
        image = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1)
        if self.style == "caffe":
            image = image.flip(0)  # RGB -> BGR
        out = torch.empty(image.shape, dtype=torch.float32)
        out.copy_(image)
        sample["image"] = out.sub_(self.mean).div_(self.std)
        return sample


class Compose:
    """Apply transforms in order, passing the sample's generator to each."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def build_transforms(data_cfg: Any, train: bool) -> Compose:
    """Resize (multi-scale in training), flip (training only), normalise, from a data config."""
    multiscale = data_cfg.get("multiscale_short") if train else None
    steps: list[Any] = [Resize(tuple(data_cfg.img_scale), multiscale)]
    flip_prob = float(data_cfg.get("flip_prob", 0.5)) if train else 0.0
    steps.append(RandomFlip(flip_prob))
    norm = data_cfg.get("normalize") or {}
    steps.append(Normalize(norm.get("style", "pytorch"), norm.get("mean"), norm.get("std")))
    return Compose(steps)


PAD_MODES = ("divisor", "fixed")  # data.pad.mode: canvas_size
PAD_POSITIONS = ("top_left", "centre", "center")  # data.pad.position: pad_offset


def canvas_size(shapes: Sequence[tuple[int, int]], mode: str = "divisor", size_divisor: int = 32,
                canvas: Sequence[int] | None = None) -> tuple[int, int]:
    """The (Hc, Wc) canvas for a batch of (h, w) image shapes.

    ``divisor``: the largest h and w rounded up to a multiple of ``size_divisor``.
    ``fixed``: the configured ``canvas`` (every image must fit; the resize scale should guarantee it).
    """
    max_h = max(s[0] for s in shapes)
    max_w = max(s[1] for s in shapes)
    if mode == "fixed":
        if canvas is None:
            raise ValueError("pad.mode 'fixed' needs pad.canvas = [H, W]")
        hc, wc = int(canvas[0]), int(canvas[1])
        if max_h > hc or max_w > wc:
            raise ValueError(f"image {max_h}x{max_w} does not fit the fixed canvas {hc}x{wc}; lower img_scale")
        return hc, wc
    if mode != "divisor":
        raise ValueError(f"pad.mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    d = max(1, int(size_divisor))
    return -(-max_h // d) * d, -(-max_w // d) * d


def pad_offset(img_shape: tuple[int, int], canvas: tuple[int, int], position: str = "top_left") -> tuple[int, int]:
    """(top, left) offset of an image on the canvas: 0, 0 for top-left, the centring offset for centre."""
    if position in ("centre", "center"):
        return (canvas[0] - img_shape[0]) // 2, (canvas[1] - img_shape[1]) // 2
    if position == "top_left":
        return 0, 0
    raise ValueError(f"pad.position must be one of {', '.join(PAD_POSITIONS)}, got {position!r}")
