"""Synthetic COCO generator: determinism, COCO layout, and the properties the model relies on."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from solo_npu.data.synthetic import CATEGORIES, generate_synthetic_coco, main


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", 3, 2, size=64, seed=5)
    main(["--out", str(tmp_path / "b"), "--num-train", "3", "--num-val", "2", "--size", "64", "--seed", "5"])
    c = generate_synthetic_coco(tmp_path / "c", 3, 2, size=64, seed=6)
    files_a, files_b = _tree_bytes(a), _tree_bytes(tmp_path / "b")
    assert files_a == files_b
    assert sorted(files_a) == sorted(
        ["annotations/instances_train2017.json", "annotations/instances_val2017.json"]
        + [f"train2017/{i:012d}.png" for i in (1, 2, 3)] + [f"val2017/{i:012d}.png" for i in (1, 2)]
    )
    assert _tree_bytes(c)["annotations/instances_train2017.json"] != files_a["annotations/instances_train2017.json"]


def test_annotations_load_and_are_consistent(synthetic_coco):
    coco = COCO(str(synthetic_coco / "annotations" / "instances_train2017.json"))
    assert sorted(coco.getCatIds()) == [1, 3, 7]
    assert [c["name"] for c in coco.loadCats([1, 3, 7])] == ["circle", "rectangle", "triangle"]
    assert len(coco.getImgIds()) == 16
    aspects, sides, per_image = [], [], []
    for img in coco.loadImgs(coco.getImgIds()):
        image = (synthetic_coco / "train2017" / img["file_name"])
        assert image.is_file()
        aspects.append(img["width"] / img["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        per_image.append(len(anns))
        for ann in anns:
            mask = coco.annToMask(ann)
            assert mask.shape == (img["height"], img["width"])
            assert ann["area"] == mask.sum() > 0
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(ann["bbox"], [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1], atol=1.0)
            assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 3, 7)
            sides.append(np.sqrt(ann["area"]))
    assert min(per_image) >= 1 and max(per_image) <= 6
    assert min(aspects) < 0.9 and max(aspects) > 1.1  # both orientations for aspect grouping
    assert min(sides) < 16 and max(sides) > 48  # a wide range of scales


def test_occluded_masks_exclude_occluders(synthetic_coco):
    coco = COCO(str(synthetic_coco / "annotations" / "instances_val2017.json"))
    overlaps = 0
    for img_id in coco.getImgIds():
        masks = np.stack([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))])
        # polygon rasterisation may blur the boundary by a pixel, never more
        overlaps = max(overlaps, int((masks.sum(0) > 1).sum()) / max(1, int(masks.sum())))
    assert overlaps < 0.05
    data = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    assert data["categories"] == CATEGORIES


def test_shape_scale_and_max_shapes_bound_the_instances(tmp_path):
    big = generate_synthetic_coco(tmp_path / "big", 0, 12, size=96, seed=3, shape_scale=(0.4, 0.8), max_shapes=2)
    default = generate_synthetic_coco(tmp_path / "default", 0, 12, size=96, seed=3)
    big_coco = COCO(str(big / "annotations/instances_val2017.json"))
    default_coco = COCO(str(default / "annotations/instances_val2017.json"))
    for img_id in big_coco.getImgIds():
        assert 1 <= len(big_coco.getAnnIds(imgIds=img_id)) <= 2
    median = lambda coco: np.median([a["area"] for a in coco.anns.values()])  # noqa: E731
    assert median(big_coco) > 2 * median(default_coco)
    main(["--out", str(tmp_path / "cli"), "--num-train", "0", "--num-val", "12", "--size", "96", "--seed", "3",
          "--shape-scale", "0.4", "0.8", "--max-shapes", "2"])
    assert _tree_bytes(tmp_path / "cli") == _tree_bytes(big)
