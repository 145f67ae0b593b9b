"""CocoInstanceDataset: label maps, ground truth, deterministic samples, planted faults."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from solo_npu.data.coco import CocoInstanceDataset
from solo_npu.data.synthetic import generate_synthetic_coco
from solo_npu.data.transforms import Compose, RandomFlip, Resize


def _paths(root, split="train"):
    return root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"


def test_label_maps_and_ground_truth_match_the_annotations(synthetic_coco):
    ann_file, img_dir = _paths(synthetic_coco, "val")
    ds = CocoInstanceDataset(ann_file, img_dir, train=True, max_instances=10)
    assert ds.cat_ids == [1, 3, 7] and ds.label_to_cat == [1, 3, 7]
    assert ds.cat_to_label == {1: 0, 3: 1, 7: 2} and ds.class_names == ["circle", "rectangle", "triangle"]
    coco = COCO(str(ann_file))
    sample = ds[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=sample["meta"]["image_id"]))
    np.testing.assert_array_equal(sample["masks"], np.stack([coco.annToMask(a) for a in anns]))
    assert sample["labels"].tolist() == [ds.cat_to_label[a["category_id"]] for a in anns]
    np.testing.assert_allclose(sample["boxes"][:, :2], [a["bbox"][:2] for a in anns])
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == sample["masks"].shape[1:] + (3,)
    assert ds.aspect_flags.dtype == bool and len(ds.aspect_flags) == len(ds) == 8


def test_sample_depends_only_on_seed_epoch_and_index(synthetic_coco):
    tf = Compose([Resize((96, 64), multiscale_short=[48, 56, 64]), RandomFlip(0.5)])
    ds = CocoInstanceDataset(*_paths(synthetic_coco), transforms=tf, seed=3)
    a, b = ds[(5, 2)], ds[(5, 2)]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["masks"], b["masks"])
    metas = [(ds[(5, e)]["meta"]["flip"], ds[(5, e)]["meta"]["img_shape"]) for e in range(8)]
    assert len(set(metas)) > 1
    ds.set_epoch(2)
    np.testing.assert_array_equal(ds[5]["image"], a["image"])


def _planted(tmp_path):
    """Eight images with one fault of each kind planted in images 1-6 and a crowd region on image 7."""
    root = generate_synthetic_coco(tmp_path / "faulty", 8, 0, size=64, seed=1)
    ann_file, img_dir = _paths(root)
    data = json.loads(ann_file.read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    png = img_dir / "000000000001.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # truncated PNG
    (img_dir / "000000000002.png").unlink()  # missing file
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 5]  # no instances left
    base = {"area": 25.0, "iscrowd": 0, "category_id": 1}
    h6, w6 = size[6]
    data["annotations"] += [
        {**base, "id": 9001, "image_id": 3, "segmentation": [[10, 10, 20, 20, 30, 30]], "bbox": [10, 10, 20, 20]},
        {**base, "id": 9002, "image_id": 4, "category_id": 99, "segmentation": [[1, 1, 9, 1, 9, 9]],
         "bbox": [1, 1, 8, 8]},
        {**base, "id": 9003, "image_id": 6, "segmentation": [[w6 + 5, h6 + 5, w6 + 9, h6 + 5, w6 + 9, h6 + 9]],
         "bbox": [w6 + 5, h6 + 5, 4, 4]},
        {**base, "id": 9004, "image_id": 7, "iscrowd": 1, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]],
         "bbox": [0, 0, 20, 20]},
    ]
    ann_file.write_text(json.dumps(data))
    return root


EXPECTED = {"orphan_annotation": 0, "duplicate_annotation_id": 0, "unreadable_image": 1,
            "missing_image": 1, "empty_image": 1, "small_image": 0, "degenerate_segmentation": 1,
            "bad_category": 1, "box_outside_image": 1, "zero_area": 0, "degenerate_box": 0, "too_many_instances": 0,
            "image_size_mismatch": 0, "empty_mask": 0}


def test_planted_faults_train_epoch_with_workers_counts_each_kind(tmp_path, caplog):
    root = _planted(tmp_path)
    with caplog.at_level(logging.WARNING, logger="solo_npu.data"):
        ds = CocoInstanceDataset(*_paths(root), train=True, max_instances=10)
    init_logs = [r.getMessage() for r in caplog.records]
    for kind, name in [("missing_image", "000000000002.png"), ("empty_image", "000000000005.png"),
                       ("degenerate_segmentation", "000000000003.png"), ("bad_category", "000000000004.png"),
                       ("box_outside_image", "000000000006.png")]:
        assert sum(m.startswith(kind) for m in init_logs) == 1
        assert any(m.startswith(kind) and name in m for m in init_logs)
    assert len(ds) == 6  # the missing and the empty image are skipped
    loader = DataLoader(ds, batch_size=None, sampler=list(range(len(ds))), num_workers=2,
                        collate_fn=lambda s: s)
    ids = [s["meta"]["image_id"] for s in loader]
    assert len(ids) == 6 and 1 not in ids and ids[0] == 3  # index 0 (image 1) served by the next image
    assert ds.fault_counts() == EXPECTED  # the unreadable image was found in a worker process
    assert all(len(ds[i]["labels"]) > 0 for i in range(len(ds)))
    assert 9004 not in [a for i in range(len(ds)) for a in ds.records[i]["anns"]]  # crowd never a target


def test_planted_faults_evaluation_keeps_images_without_ground_truth(tmp_path):
    root = _planted(tmp_path)
    ds = CocoInstanceDataset(*_paths(root), train=False, max_instances=10)
    samples = [ds[i] for i in range(len(ds))]
    # The missing file (image 2) is kept too: scored with no predictions, as the unreadable one (image 1), since
    # leaving an image out of COCOeval raises the AP.
    assert [s["meta"]["image_id"] for s in samples] == [1, 2, 3, 4, 5, 6, 7, 8]
    for s in samples[:2]:
        assert s["meta"]["image_ok"] is False and s["image"].max() == 0 and len(s["labels"]) == 0
    assert samples[1]["image"].shape[:2] == (ds.records[1]["height"], ds.records[1]["width"])
    assert len(samples[4]["labels"]) == 0  # empty
    assert samples[0]["masks"] is None  # evaluation reads the json, not decoded masks
    assert all(s["meta"]["image_ok"] for s in samples[2:])
    counts = ds.fault_counts()
    assert counts == {**EXPECTED, "missing_image": 1}  # counted once, when scanned: not again as unreadable


def test_too_many_instances_keeps_the_largest(tmp_path, synthetic_coco):
    ann_file, img_dir = _paths(synthetic_coco)
    ds = CocoInstanceDataset(ann_file, img_dir, train=True, max_instances=2)
    coco = COCO(str(ann_file))
    crowded = [i for i in coco.getImgIds() if len(coco.getAnnIds(imgIds=i)) > 2]
    assert ds.fault_counts()["too_many_instances"] == len(crowded) > 0
    rec = next(r for r in ds.records if r["image_id"] == crowded[0])
    anns = coco.loadAnns(coco.getAnnIds(imgIds=crowded[0]))
    largest = sorted(anns, key=lambda a: -a["area"])[:2]
    assert [a["id"] for a in rec["anns"]] == [a["id"] for a in anns if a in largest]  # in annotation order


def test_clear_errors_for_missing_inputs(tmp_path, synthetic_coco):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoInstanceDataset(tmp_path / "nope.json", synthetic_coco / "train2017")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    shutil.copy(_paths(synthetic_coco)[0], tmp_path / "a.json")
    with pytest.raises(ValueError, match=r"no images found in .*empty_dir: none of the 16 images a.json names"):
        CocoInstanceDataset(tmp_path / "a.json", empty, train=True)
    data = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "b.json").write_text(json.dumps({**data, "annotations": []}))  # images, but nothing to learn
    with pytest.raises(ValueError, match=r"no usable training image in .*train2017: .*'empty_image': 16, "
                                         r"'missing_image': 0}$"):
        CocoInstanceDataset(tmp_path / "b.json", synthetic_coco / "train2017", train=True)
    # A detection set (boxes, no masks): the line says why.
    boxes = [{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]]
    (tmp_path / "c.json").write_text(json.dumps({**data, "annotations": boxes}))
    with pytest.raises(ValueError, match=r"'degenerate_segmentation': \d+.*; c.json has boxes but no masks "
                                         r"\('segmentation'\), and SOLOv2 learns from instance masks$"):
        CocoInstanceDataset(tmp_path / "c.json", synthetic_coco / "train2017", train=True)


def _tiny_coco_with_orphans_and_duplicates(tmp_path):
    """Four synthetic images; two orphan annotations (image ids 77 and 78 name no image) and two copies of
    an existing annotation id: one identical, one with a different category and image."""
    root = generate_synthetic_coco(tmp_path / "dup", 4, 0, size=64, seed=2)
    ann_file, img_dir = _paths(root)
    data = json.loads(ann_file.read_text())
    first = data["annotations"][0]
    other_image = next(im["id"] for im in data["images"] if im["id"] != first["image_id"])
    data["annotations"] += [
        {**first, "id": 9100, "image_id": 77},
        {**first, "id": 9101, "image_id": 78},
        dict(first),
        {**first, "image_id": other_image, "category_id": data["categories"][-1]["id"]},
    ]
    ann_file.write_text(json.dumps(data))
    return ann_file, img_dir, first, len(data["annotations"]) - 3  # the orphans and the identical copy


def test_orphan_annotations_and_duplicate_ids_are_counted_logged_and_skipped(tmp_path, caplog):
    ann_file, img_dir, first, clean_total = _tiny_coco_with_orphans_and_duplicates(tmp_path)
    with caplog.at_level(logging.WARNING, logger="solo_npu.data"):
        ds = CocoInstanceDataset(ann_file, img_dir, train=False)
    lines = [r.getMessage() for r in caplog.records if "orphan" in r.getMessage()]
    assert len(lines) == 1 and "2 orphan annotations" in lines[0] and "2 duplicate annotation ids" in lines[0]
    counts = ds.fault_counts()
    assert counts["orphan_annotation"] == 2 and counts["duplicate_annotation_id"] == 2
    # The first annotation of the id keeps it, in the index and in the samples' ground truth alike; its identical
    # copy is skipped; the other object of that id stays, under a new id above the file's largest.
    assert len(ds.coco.anns) == len(ds.coco.dataset["annotations"]) == clean_total
    assert ds.coco.anns[first["id"]] == first
    other = ds.coco.dataset["annotations"][-1]
    assert other["id"] == max(a["id"] for a in ds.coco.dataset["annotations"][:-1]) + 1
    assert (other["category_id"], other["segmentation"]) == (ds.coco.dataset["categories"][-1]["id"],
                                                             first["segmentation"])
    per_image = {i: [a["id"] for a in ds.coco.imgToAnns[i]] for i in ds.coco.imgs}
    assert sum(ids.count(first["id"]) for ids in per_image.values()) == 1
    assert first["id"] in per_image[first["image_id"]]
    assert not set(ds.coco.imgToAnns) - set(ds.coco.imgs)  # no orphan left in the index
    rec = next(r for r in ds.records if r["image_id"] == first["image_id"])
    assert len(rec["anns"]) == len(per_image[first["image_id"]])


def test_duplicates_would_change_the_ground_truth_pycocotools_scores(tmp_path):
    """Why duplicates are resolved before indexing: pycocotools' COCO.createIndex maps ``anns[ann['id']]`` (the
    last one wins) but appends every annotation to ``imgToAnns``, so COCOeval's ``loadAnns(getAnnIds(img))`` reads
    the last copy once per copy, on the first copy's image too."""
    ann_file, img_dir, first, _ = _tiny_coco_with_orphans_and_duplicates(tmp_path)
    raw = COCO(str(ann_file))
    loaded = raw.loadAnns(raw.getAnnIds(imgIds=[first["image_id"]]))
    assert [a["image_id"] for a in loaded if a["id"] == first["id"]] != [first["image_id"]]
    ds = CocoInstanceDataset(ann_file, img_dir, train=False)
    loaded = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[first["image_id"]]))
    assert [a for a in loaded if a["id"] == first["id"]] == [first]


def test_annotation_without_id_is_a_clear_error(tmp_path):
    root = generate_synthetic_coco(tmp_path / "noid", 2, 0, size=64, seed=3)
    ann_file, img_dir = _paths(root)
    data = json.loads(ann_file.read_text())
    del data["annotations"][1]["id"]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation 1 has no id"):
        CocoInstanceDataset(ann_file, img_dir)


@pytest.mark.parametrize("content,message", [
    (None, r"is not a JSON file \(\w+"),  # cut short, as an interrupted download or copy leaves it
    (b"\x89PNG\r\n\x1a\n\x00\x00", r"is not a JSON file \('utf-8' codec can't decode"),
    (b'[{"id": 1}]', r"is not a COCO annotation file: the top level is a list"),
    (b'{"images": []}', r"is not a COCO instances file: it has no 'categories' list \(its keys: images\)"),
    (b'{"info": {}, "categories": [], "images": {}}',
     r"it has no 'images' list \(its keys: info, categories, images\)"),
], ids=["truncated", "binary", "list", "no-categories", "images-not-a-list"])
def test_unreadable_annotation_file_is_one_line(tmp_path, content, message):
    """A file that is not a COCO instances json: AnnotationFileError (a ValueError) whose one line names the file,
    not a json, UnicodeDecodeError or KeyError traceback from deeper down."""
    from solo_npu.data import AnnotationFileError

    root = generate_synthetic_coco(tmp_path / "bad", 2, 0, size=64, seed=3)
    ann_file, img_dir = _paths(root)
    text = ann_file.read_bytes()
    ann_file.write_bytes(text[: len(text) // 2] if content is None else content)
    with pytest.raises(AnnotationFileError, match=message) as info:
        CocoInstanceDataset(ann_file, img_dir)
    assert str(ann_file) in str(info.value) and "\n" not in str(info.value)


def test_crowd_only_image_trains_as_a_negative(tmp_path):
    """An image whose only annotation is a crowd region stays in training with no instance (mmdet's
    CocoDataset.filter_data keeps it: cat_img_map lists crowd annotations); an image with no annotation is
    still skipped. Such a sample goes through the training transforms, the collate, the SOLOv2 targets and
    losses: every cell is background, the mask loss is 0 and the gradients are finite."""
    import torch
    from omegaconf import OmegaConf

    from solo_npu.data import build_collate, build_transforms
    from solo_npu.models import build_model

    root = generate_synthetic_coco(tmp_path / "crowd", 4, 0, size=64, seed=3)
    ann_file, img_dir = _paths(root)
    data = json.loads(ann_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in (2, 3)]
    data["annotations"].append({"id": 9100, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 400.0,
                                "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]], "bbox": [0, 0, 20, 20]})
    ann_file.write_text(json.dumps(data))  # image 2: one crowd region; image 3: no annotation at all

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "data" / "synthetic.yaml")
    cfg.img_scale, cfg.flip_prob = [64, 64], 1.0
    ds = CocoInstanceDataset(ann_file, img_dir, transforms=build_transforms(cfg, train=True), train=True)
    assert ds.image_ids == [1, 2, 4]
    assert ds.fault_counts()["empty_image"] == 1  # image 3, skipped
    crowd = ds[(1, 0)]
    assert crowd["meta"]["image_id"] == 2 and crowd["meta"]["image_ok"]
    assert len(crowd["labels"]) == 0 and crowd["masks"].shape == (0, *crowd["image"].shape[-2:])

    torch.manual_seed(0)
    model = build_model(OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "solov2_tiny.yaml"),
                        num_classes=3).train()
    collate = build_collate(cfg)
    for samples in ([crowd], [crowd, ds[(0, 0)]]):
        batch = collate(samples)
        assert not batch["gt_valid"][0].any()
        losses = model(batch["images"], batch)
        assert all(torch.isfinite(v) for v in losses.values())
        if len(samples) == 1:
            assert losses["loss_mask"] == 0 and losses["loss_cls"] > 0  # background everywhere
        model.zero_grad()
        (losses["loss_cls"] + losses["loss_mask"]).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("annotated", ["stored", "upright", "other"])
def test_exif_turned_photo_is_read_in_the_annotations_space(tmp_path, annotated):
    """A phone photo stored 100 wide x 40 high with EXIF orientation 6 ("turn 90 degrees clockwise"): cv2.imread
    turns it to 40 x 100. Annotated on the stored pixels (width 100, height 40) it is read as stored, so its mask
    covers the bright half it was drawn on; annotated upright it is read turned; any other size is a counted
    image_size_mismatch."""
    from PIL import Image

    root = tmp_path / "photos"
    (root / "train2017").mkdir(parents=True)
    stored = np.zeros((40, 100, 3), np.uint8)
    stored[:, :50] = 255  # the left half of the stored bitmap is white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "train2017" / "photo.jpg", exif=exif.tobytes(), quality=95)
    width, height, polygon = {"stored": (100, 40, [5, 5, 45, 5, 45, 35, 5, 35]),
                              "upright": (40, 100, [5, 5, 35, 5, 35, 45, 5, 45]),
                              "other": (64, 64, [5, 5, 45, 5, 45, 35, 5, 35])}[annotated]
    ann = {"images": [{"id": 1, "file_name": "photo.jpg", "width": width, "height": height}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1200.0,
                            "segmentation": [polygon], "bbox": [5, 5, 40, 30]}],
           "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(ann))
    ds = CocoInstanceDataset(*_paths(root), train=False, max_instances=10, with_masks=True)
    sample = ds[0]
    if annotated == "other":
        assert ds.fault_counts()["image_size_mismatch"] == 1 and sample["masks"].shape[0] == 0
        return
    assert ds.fault_counts()["image_size_mismatch"] == 0
    image, mask = sample["image"], sample["masks"][0].astype(bool)
    assert image.shape == (height, width, 3) and mask.shape == (height, width)
    if annotated == "stored":  # the mask lies on the white half, as drawn
        assert image[mask].mean() > 240 and image[:, 60:].mean() < 15
        again = ds[0]["image"]  # read again: decoded once, as stored (the flags are remembered)
        assert np.array_equal(again, image) and ds.records[0]["imread_flags"] & cv2.IMREAD_IGNORE_ORIENTATION
    else:  # turned clockwise: the stored left half is now the top
        assert image[:45].mean() > 240 and image[55:].mean() < 15


@pytest.mark.parametrize("suffix", [".tif", ".jpg", ".png"])
def test_an_image_tagged_with_a_quarter_turn_is_read_in_every_format(tmp_path, suffix):
    """OpenCV 5.1's cv2.imread gives nothing for a TIFF whose orientation tag is 5 to 8; images are decoded from
    their bytes (cv2.imdecode, as mmcv's imfrombytes does), which reads it turned as the JPEG and PNG ones."""
    from PIL import Image

    from solo_npu.data.coco import read_image

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = 255  # the left half of the stored bitmap is white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    image = read_image(path)
    assert image is not None and image.shape == (60, 40, 3)
    assert image[:25].mean() > 240 and image[35:].mean() < 15  # turned clockwise: the white half is on top


@pytest.mark.parametrize("train", [True, False])
def test_image_folder_without_the_splits_images_is_one_line_naming_where_they_are(synthetic_coco, tmp_path, train):
    """val2017.zip unpacked into a folder of its own name (val2017/val2017/*.png): evaluation went through no image
    and reported AP 0.0 as a result; now it is one line that names the folder holding the images."""
    from solo_npu.data.coco import AnnotationFileError, ImagesNotFoundError

    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco / "annotations", root / "annotations")
    split = "train2017" if train else "val2017"
    shutil.copytree(synthetic_coco / split, root / split / split)
    ann_file = root / "annotations" / f"instances_{split}.json"
    total = len(json.loads(ann_file.read_text())["images"])
    with pytest.raises(ImagesNotFoundError) as info:
        CocoInstanceDataset(ann_file, root / split, train=train)
    message = str(info.value)
    assert isinstance(info.value, AnnotationFileError) and "\n" not in message
    assert message.startswith(f"no images found in {root / split}: none of the {total} images "
                              f"instances_{split}.json names is there (first: "), message
    assert message.endswith(f"is in {root / split / split}: point the split's img_dir there"), message
    # Not one level off: no hint. Some images there: the others are counted, as before.
    shutil.rmtree(root / split / split)
    with pytest.raises(ImagesNotFoundError, match=r"names is there \(first: [^)]*\)$"):
        CocoInstanceDataset(ann_file, root / split, train=train)
    first = sorted((synthetic_coco / split).iterdir())[0]
    shutil.copy(first, root / split / first.name)
    ds = CocoInstanceDataset(ann_file, root / split, train=train)
    assert len(ds) == (1 if train else total) and ds.fault_counts()["missing_image"] == total - 1


def test_truncated_jpeg_is_an_unreadable_image(tmp_path):
    """libjpeg decodes a JPEG file cut short with only a warning on stderr ("Premature end of JPEG file") and
    cv2.imread returns it with the missing rows grey: the dataset counts it as an unreadable image, as any other
    corrupt file. Zero padding after the end marker, and data appended after it (phones append a video), are
    whole images."""
    from solo_npu.data.coco import read_image

    root = generate_synthetic_coco(tmp_path / "jpeg", 3, 0, size=64, seed=1)
    ann_file, img_dir = _paths(root)
    data = json.loads(ann_file.read_text())
    files = []
    for im in data["images"]:
        png = img_dir / im["file_name"]
        jpg = png.with_suffix(".jpg")
        cv2.imwrite(str(jpg), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        png.unlink()
        im["file_name"] = jpg.name
        files.append(jpg)
    ann_file.write_text(json.dumps(data))
    whole = files[0].read_bytes()
    files[0].write_bytes(whole[: len(whole) * 2 // 3])
    assert cv2.imread(str(files[0])) is not None  # cv2 alone does not notice
    files[1].write_bytes(files[1].read_bytes() + b"\x00" * 16)
    files[2].write_bytes(files[2].read_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert read_image(files[0]) is None
    for im, file in zip(data["images"][1:], files[1:]):
        assert read_image(file).shape == (im["height"], im["width"], 3)
    ds = CocoInstanceDataset(ann_file, img_dir, train=False, max_instances=10)
    assert [ds[i]["meta"]["image_ok"] for i in range(3)] == [False, True, True]
    assert ds.fault_counts()["unreadable_image"] == 1
