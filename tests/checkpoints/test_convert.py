"""Checkpoint converters: mmdet / original SOLO / torchvision layouts, class-count changes, the CLI."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.checkpoints import CheckpointError, load_checkpoint
from solo_npu.checkpoints.convert import checkpoint_classes, load_model_weights, main
from solo_npu.engine.finetune import load_weights
from solo_npu.models import SOLOv2, build_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
VARIANTS = {  # depth, head feat, stacked convs, mask-feature feat / out
    "solov2_r50": (50, 512, 4, 128, 256),
    "solov2_light_r18": (18, 256, 2, 128, 128),
}


def build(name: str, num_classes: int = 80, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(OmegaConf.load(CONF / f"{name}.yaml"), num_classes=num_classes).eval()


def resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    exp, out, cin = (4 if depth >= 50 else 1), {"conv1.weight": (64, 3, 7, 7)}, 64
    bn = {f"bn1.{s}": (64,) for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    out.update({k: (() if k.endswith("tracked") else v) for k, v in bn.items()})
    for li, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            convs = ([(planes, cin, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)] if exp == 4
                     else [(planes, cin, 3, 3), (planes, planes, 3, 3)])
            norms = [f"{p}.bn{j + 1}" for j in range(len(convs))]
            for j, shape in enumerate(convs):
                out[f"{p}.conv{j + 1}.weight"] = shape
            if b == 0 and (li > 1 or cin != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                norms.append(f"{p}.downsample.1")
            for name, c in zip(norms, [convs[j][0] for j in range(len(convs))] + [planes * exp]):
                for s in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{name}.{s}"] = (c,)
                out[f"{name}.num_batches_tracked"] = ()
            cin = planes * exp
    return out


def mmdet_solov2_shapes(name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an mmdet 3.x SOLOv2 state dict, written out from mmdet's solov2_head.py, ResNet and FPN."""
    depth, feat, stacked, mf_feat, mf_out = VARIANTS[name]
    out = {f"backbone.{k}": v for k, v in resnet_shapes(depth).items()}
    exp = 4 if depth >= 50 else 1
    for i, c in enumerate(x * exp for x in (64, 128, 256, 512)):
        out.update({f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,),
                    f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)})

    def conv_gn(prefix: str, cout: int, cin: int, k: int = 3) -> None:
        out.update({f"{prefix}.conv.weight": (cout, cin, k, k), f"{prefix}.gn.weight": (cout,),
                    f"{prefix}.gn.bias": (cout,)})

    for i in range(stacked):
        conv_gn(f"mask_head.kernel_convs.{i}", feat, 258 if i == 0 else feat)
        conv_gn(f"mask_head.cls_convs.{i}", feat, 256 if i == 0 else feat)
    out.update({"mask_head.conv_cls.weight": (num_classes, feat, 3, 3), "mask_head.conv_cls.bias": (num_classes,),
                "mask_head.conv_kernel.weight": (mf_out, feat, 3, 3), "mask_head.conv_kernel.bias": (mf_out,)})
    mf = "mask_head.mask_feature_head"
    conv_gn(f"{mf}.convs_all_levels.0.conv0", mf_feat, 256)
    for level in (1, 2, 3):
        for j in range(level):
            cin = (258 if level == 3 else 256) if j == 0 else mf_feat
            conv_gn(f"{mf}.convs_all_levels.{level}.conv{j}", mf_feat, cin)
    conv_gn(f"{mf}.conv_pred", mf_out, mf_feat, k=1)
    return out


def to_solo_names(key: str) -> str:
    """mmdet 3.x -> original WXinlong/SOLO names."""
    for new, old in (("mask_head.mask_feature_head.conv_pred.", "mask_feat_head.conv_pred.0."),
                     ("mask_head.mask_feature_head.", "mask_feat_head."),
                     ("mask_head.cls_convs.", "bbox_head.cate_convs."),
                     ("mask_head.kernel_convs.", "bbox_head.kernel_convs."),
                     ("mask_head.conv_cls.", "bbox_head.solo_cate."),
                     ("mask_head.conv_kernel.", "bbox_head.solo_kernel.")):
        if key.startswith(new):
            return old + key[len(new):]
    return key


def tagged_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Every tensor filled with its own index (stride-0 views: tiny files, and a wrong mapping shows)."""
    return {k: torch.tensor(float(i)).expand(s) if s else torch.tensor(i) for i, (k, s) in enumerate(shapes.items())}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mmdet_and_solo_layouts_load_strict(tmp_path, name):
    model = build(name)
    shapes = mmdet_solov2_shapes(name, 80)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    tagged = tagged_state(shapes)
    index = {k: i for i, k in enumerate(shapes)}

    torch.save({"state_dict": tagged, "meta": {"epoch": 12}}, tmp_path / "mmdet.pth")
    report = load_model_weights(model, tmp_path / "mmdet.pth")
    assert report["source"] == "mmdet" and report["missing"] == report["unexpected"] == []
    sd = model.state_dict()
    for key in ("backbone.layer3.1.conv2.weight", "neck.fpn_convs.2.conv.weight", "mask_head.conv_kernel.bias",
                "mask_head.mask_feature_head.convs_all_levels.3.conv2.gn.weight"):
        assert (sd[key] == index[key]).all()

    # Original SOLO: renamed head; its classifier has one output per class (80 for num_classes=81).
    solo = {to_solo_names(k): v for k, v in tagged.items()}
    assert solo["bbox_head.solo_cate.weight"].shape[0] == 80
    assert not any(k.startswith("mask_head.") for k in solo)
    torch.save({"state_dict": solo, "meta": {}}, tmp_path / "solo.pth")
    fresh = build(name, seed=1)
    report = load_model_weights(fresh, tmp_path / "solo.pth", source="auto")
    assert report["source"] == "solo" and report["missing"] == report["unexpected"] == []
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_convert_save_reload_is_bit_identical(tmp_path, capsys):
    model = build("solov2_tiny", num_classes=3)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    solo = {to_solo_names(k): v for k, v in model.state_dict().items()}
    torch.save({"state_dict": solo, "meta": {}}, tmp_path / "solo_tiny.pth")
    assert main([str(tmp_path / "solo_tiny.pth"), str(tmp_path / "clean.pth"), "--from", "solo",
                 "--model-config", str(CONF / "solov2_tiny.yaml"), "--num-classes", "3"]) == 0
    printed = capsys.readouterr().out
    assert "missing keys (0): []" in printed and "unexpected keys (0): []" in printed
    reloaded = build("solov2_tiny", num_classes=3, seed=5)
    assert load_model_weights(reloaded, tmp_path / "clean.pth")["source"] == "ours"
    with torch.no_grad():
        for a, b in zip(model.export_forward(images), reloaded.export_forward(images)):
            assert torch.equal(a, b)
    # Without a model config the CLI only renames.
    assert main([str(tmp_path / "solo_tiny.pth"), str(tmp_path / "renamed.pth"), "--from", "solo"]) == 0
    renamed = torch.load(tmp_path / "renamed.pth", weights_only=True)["model"]
    assert set(renamed) == set(model.state_dict())


def test_other_class_count_reinitialises_only_the_classifier(tmp_path, caplog):
    src = build("solov2_tiny", num_classes=3)
    torch.save({"model": src.state_dict()}, tmp_path / "ours.pth")
    dst = build("solov2_tiny", num_classes=5, seed=9)
    # Outside fine-tuning a classifier of another size is an error naming both counts.
    with pytest.raises(CheckpointError, match="classifier for 3 classes but the model has 5"):
        load_model_weights(dst, tmp_path / "ours.pth")
    with caplog.at_level(logging.INFO):
        report = load_model_weights(dst, tmp_path / "ours.pth", reinit_classifier=True)
    assert sorted(report["reinitialised"]) == ["mask_head.conv_cls.bias", "mask_head.conv_cls.weight"]
    assert [r.levelname for r in caplog.records if "re-initialised" in r.getMessage()] == ["WARNING"]
    assert torch.equal(dst.mask_head.conv_kernel.weight, src.mask_head.conv_kernel.weight)
    assert dst.mask_head.conv_cls.weight.shape[0] == 5
    assert torch.allclose(dst.mask_head.conv_cls.bias, torch.full((5,), -4.59512), atol=1e-4)


def solo_file(path: Path, num_classes: int, names: list[str] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """An original SOLO checkpoint of the tiny model (SOLO's key names, small random tensors) at ``path``;
    returns its state dict."""
    gen = torch.Generator().manual_seed(seed)
    solo = {to_solo_names(k): torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in build("solov2_tiny", num_classes=num_classes).state_dict().items()}
    meta = {"mmdet_version": "1.0.0+unknown", "epoch": 12}
    if names is not None:
        meta["CLASSES"] = tuple(names)
    torch.save({"meta": meta, "state_dict": solo}, path)
    return solo


def test_solo_classifier_has_no_background_channel(tmp_path, caplog, capsys):
    # The original SOLO head's solo_cate has num_classes - 1 = 80 outputs for its num_classes=81 configs,
    # channel k = class k: into a 79-class model it is a class-count mismatch, never a shifted classifier.
    path = tmp_path / "SOLOv2_tiny_1x.pth"
    solo = solo_file(path, 80, [f"class{i}" for i in range(80)])
    cls_w = solo["bbox_head.solo_cate.weight"]
    assert checkpoint_classes(torch.load(path, weights_only=True), SOLOv2).num_classes == 80
    same = build("solov2_tiny", num_classes=80, seed=1)
    assert load_model_weights(same, path)["source"] == "solo"
    assert torch.equal(same.mask_head.conv_cls.weight, cls_w)

    fewer = build("solov2_tiny", num_classes=79, seed=1)
    with pytest.raises(CheckpointError, match="classifier for 80 classes but the model has 79"):
        load_model_weights(fewer, path)
    with pytest.raises(CheckpointError, match="classifier for 80 classes but the model has 79"):
        load_weights(fewer, str(path))  # evaluation
    with caplog.at_level(logging.INFO):
        report = load_weights(fewer, str(path), allow_classifier_change=True)  # fine-tuning
    assert sorted(report["reinitialised"]) == ["mask_head.conv_cls.bias", "mask_head.conv_cls.weight"]
    assert [r.levelname for r in caplog.records if "re-initialised" in r.getMessage()] == ["WARNING"]
    assert not any(torch.equal(fewer.mask_head.conv_cls.weight[i], cls_w[j]) for i in range(79) for j in (i, i + 1))
    assert torch.equal(fewer.mask_head.conv_kernel.weight, solo["bbox_head.solo_kernel.weight"])

    assert main([str(path), str(tmp_path / "out.pth"), "--model-config", str(CONF / "solov2_tiny.yaml"),
                 "--num-classes", "79"]) == 1
    assert "classifier for 80 classes but the model has 79" in capsys.readouterr().out
    assert not (tmp_path / "out.pth").exists()
    # 80 outputs with 79 names: the file contradicts itself (no output is taken for a background).
    solo_file(path, 80, [f"class{i}" for i in range(79)])
    with pytest.raises(CheckpointError, match="has 80 outputs but meta.CLASSES names 79 classes"):
        checkpoint_classes(torch.load(path, weights_only=True), SOLOv2)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    model = build("solov2_tiny", num_classes=3)
    sd = model.state_dict()
    sd["mask_head.conv_kernel.weight"] = torch.zeros(7, 32, 3, 3)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"mask_head\.conv_kernel\.weight.*\(7, 32, 3, 3\).*\(16, 32, 3, 3\)"):
        load_model_weights(model, tmp_path / "bad.pth")
    del sd["mask_head.conv_kernel.weight"]
    sd["mask_head.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "keys.pth")
    with pytest.raises(CheckpointError, match="missing.*conv_kernel.*unexpected.*extra"):
        load_model_weights(model, tmp_path / "keys.pth")


def test_torchvision_backbone_init_and_pickle_guard(tmp_path):
    model = build("solov2_light_r18")
    shapes = {**resnet_shapes(18), "fc.weight": (1000, 512), "fc.bias": (1000,)}
    tagged = tagged_state(shapes)
    torch.save(tagged, tmp_path / "resnet18.pth")
    head_before = model.mask_head.conv_kernel.weight.clone()
    report = load_model_weights(model, tmp_path / "resnet18.pth")
    assert report["source"] == "torchvision" and report["unexpected"] == []
    assert report["missing"] and all(not k.startswith("backbone.") for k in report["missing"])
    assert (model.backbone.layer4[1].conv2.weight == list(shapes).index("layer4.1.conv2.weight")).all()
    assert torch.equal(model.mask_head.conv_kernel.weight, head_before)

    torch.save({"state_dict": model.state_dict(), "meta": argparse.Namespace(a=1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="trust"):
        load_model_weights(model, tmp_path / "pickled.pth")
    assert load_model_weights(model, tmp_path / "pickled.pth", trust_pickle=True)["source"] == "mmdet"


def test_cli_with_model_config_refuses_partial_files_unless_asked(tmp_path, capsys):
    config = str(CONF / "solov2_tiny.yaml")
    full = build("solov2_tiny", num_classes=3).state_dict()
    # A file without the neck, and one with a deformable convolution's offsets the model has no place for.
    no_neck = {k: v for k, v in full.items() if not k.startswith("neck.")}
    dcn = {**full, "mask_head.kernel_convs.1.conv.conv_offset.weight": torch.zeros(18, 32, 3, 3),
           "mask_head.kernel_convs.1.conv.conv_offset.bias": torch.zeros(18)}
    torch.save({"state_dict": no_neck, "meta": {}}, tmp_path / "no_neck.pth")
    torch.save({"state_dict": dcn, "meta": {}}, tmp_path / "dcn.pth")
    missing = sum(k.startswith("neck.") for k in full)

    for name, line in (("no_neck", rf"{missing} model tensors missing from the file \[neck\.lateral_convs\.0\."),
                       ("dcn", r"2 file tensors the model has no place for \[mask_head\.kernel_convs\.1\.conv\.conv_")):
        args = [str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}_out.pth"), "--model-config", config]
        assert main(args) == 1
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == 1 and "--allow-partial" in printed[0]
        assert re.search(line, printed[0]), printed[0]
        assert not (tmp_path / f"{name}_out.pth").exists()

        assert main([*args, "--allow-partial"]) == 0
        assert "--allow-partial" in capsys.readouterr().out
        out = torch.load(tmp_path / f"{name}_out.pth", weights_only=True)
        src = torch.load(tmp_path / f"{name}.pth", weights_only=True)["state_dict"]
        assert set(out["model"]) == set(full) & set(src)
        assert all(torch.equal(v, full[k]) for k, v in out["model"].items())
        # What the file lacked stays missing: the written file cannot pass for a complete model.
        if name == "no_neck":
            assert len(out["meta"]["partial"]["missing"]) == missing
            with pytest.raises(CheckpointError, match=r"missing \['neck\."):
                load_model_weights(build("solov2_tiny", num_classes=3), tmp_path / f"{name}_out.pth")
        else:
            assert sorted(out["meta"]["partial"]["dropped"]) == sorted(k for k in dcn if "conv_offset" in k)


def test_trust_pickle_names_the_missing_package(tmp_path, monkeypatch):
    # An mmengine training checkpoint pickles mmengine objects (ConfigDict, HistoryBuffer in message_hub).
    package, config = types.ModuleType("mmengine"), types.ModuleType("mmengine.config")
    config_dict = type("ConfigDict", (dict,), {"__module__": "mmengine.config"})
    config.ConfigDict, package.config = config_dict, config
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "mmengine", package)
        patch.setitem(sys.modules, "mmengine.config", config)
        state = build("solov2_tiny", num_classes=3).state_dict()
        torch.save({"meta": {}, "state_dict": state, "message_hub": config_dict(a=1)}, tmp_path / "mmengine.pth")
    monkeypatch.setitem(sys.modules, "mmengine", None)  # not installed, whatever this environment has
    monkeypatch.setitem(sys.modules, "mmengine.config", None)
    # said at once: trust_pickle alone would only reach the missing package (it was the trust hint first)
    with pytest.raises(CheckpointError, match=r"pickles objects of the package 'mmengine' \(mmengine.config."
                                              r"ConfigDict\), which weights_only=True refuses and which is not "
                                              r"installed: install mmengine and pass checkpoint_trust_pickle=true"):
        load_checkpoint(tmp_path / "mmengine.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "mmengine.pth", trust_pickle=True)
    message = str(info.value)
    assert "\n" not in message
    assert "package 'mmengine', which is not installed" in message
    assert "install mmengine" in message and "publish_model.py" in message


def test_files_that_are_not_a_solov2_are_refused(tmp_path, capsys):
    # AdelaiDet names (saved under "model" as ours) but heads without GroupNorm (MODEL.SOLOV2.NORM none), and a
    # detectron2 Mask R-CNN (backbone.bottom_up + roi_heads): one line each, nothing written.
    no_gn = {"backbone.bottom_up.stem.conv1.weight": (16, 3, 7, 7), "backbone.fpn_lateral2.weight": (32, 16, 1, 1),
             "ins_head.cate_tower.0.weight": (32, 32, 3, 3), "ins_head.cate_tower.0.bias": (32,),
             "ins_head.cate_pred.weight": (3, 32, 3, 3), "ins_head.cate_pred.bias": (3,)}
    path = tmp_path / "SOLOv2_R50_3x_nonorm.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in no_gn.items()}, "iteration": 90000}, path)
    for source, reason in (("auto", "without GroupNorm in its heads"),
                           ("mmdet", "has AdelaiDet / detectron2 names (key 'backbone.bottom_up.stem.conv1.weight'), "
                                     "not mmdet ones: pass checkpoint_source=adelaidet")):
        with pytest.raises(CheckpointError, match=re.escape(reason)):
            load_model_weights(build("solov2_tiny", num_classes=3), path, source=source)
    with pytest.raises(CheckpointError, match="without GroupNorm"):
        load_weights(build("solov2_tiny", num_classes=3), str(path))
    for extra in ([], ["--model-config", str(CONF / "solov2_tiny.yaml"), "--num-classes", "3"]):
        assert main([str(path), str(tmp_path / "out.pth"), *extra]) == 1
        assert "without GroupNorm" in capsys.readouterr().out
    mask_rcnn = tmp_path / "model_final_f10217.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
                          "roi_heads.mask_head.predictor.weight": torch.zeros(80, 256, 1, 1)}}, mask_rcnn)
    assert main([str(mask_rcnn), str(tmp_path / "out.pth")]) == 1
    assert re.search(r"1 tensors a SOLOv2 has no place for \[roi_heads\.", capsys.readouterr().out)
    assert not (tmp_path / "out.pth").exists()

    # Without --model-config the CLI checks the names against SOLOv2's: another detector, or a head alone, is refused.
    full = build("solov2_tiny", num_classes=3).state_dict()
    mask_rcnn = {"backbone.conv1.weight": full["backbone.conv1.weight"], "roi_head.mask_head.conv_logits.weight":
                 torch.zeros(80, 16, 1, 1), "rpn_head.rpn_conv.weight": torch.zeros(16, 16, 3, 3)}
    head_only = {k: v for k, v in full.items() if k.startswith("mask_head.")}
    for name, state, line in (("mask_rcnn", mask_rcnn, r"2 tensors a SOLOv2 has no place for \[roi_head\."),
                              ("head_only", head_only, r"0 tensors a SOLOv2 has no place for \[\], \d+ SOLOv2 names "
                                                       r"missing \[backbone\.")):
        torch.save({"state_dict": state, "meta": {}}, tmp_path / f"{name}.pth")
        args = [str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}_out.pth")]
        assert main(args) == 1
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == 1 and re.search(line, printed[0]), printed
        assert not (tmp_path / f"{name}_out.pth").exists()
        assert main([*args, "--allow-partial"]) == 0
        assert "--allow-partial" in capsys.readouterr().out
        written = torch.load(tmp_path / f"{name}_out.pth", weights_only=True)["model"]
        assert set(written) == {k for k in state if not k.startswith(("roi_head.", "rpn_head."))}
    # A torchvision ResNet is no SOLOv2: model.pretrained takes it as it is, and a converted copy (a backbone under
    # SOLOv2's names) would be taken neither there nor as checkpoint=; --allow-partial still writes it.
    torch.save(tagged_state({**resnet_shapes(18), "fc.weight": (1000, 512)}), tmp_path / "resnet18.pth")
    args = [str(tmp_path / "resnet18.pth"), str(tmp_path / "resnet18_out.pth")]
    assert main(args) == 1
    [line] = capsys.readouterr().out.strip().splitlines()
    assert "holds ImageNet ResNet weights (torchvision layout)" in line and "model.pretrained=PATH" in line, line
    assert not (tmp_path / "resnet18_out.pth").exists()
    assert main([*args, "--allow-partial"]) == 0
    assert "torchvision layout" in capsys.readouterr().out


def test_own_checkpoint_refuses_another_input_than_its_training_config(tmp_path):
    """A checkpoint of this project names the backbone style and pixel normalisation it was trained with; a run
    that builds the model or normalises the pixels otherwise would compute other features: one line, the fix."""
    model = build("solov2_tiny", num_classes=3)
    caffe = {"style": "caffe", "mean": [103.53, 116.28, 123.675], "std": [1.0, 1.0, 1.0]}
    pytorch = {"style": "pytorch", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    path = tmp_path / "best.pth"
    config = {"model": {"backbone": {"style": "pytorch"}}, "data": {"normalize": caffe}}
    torch.save({"model": model.state_dict(), "config": config}, path)
    with pytest.raises(CheckpointError) as info:
        load_model_weights(build("solov2_tiny", num_classes=3), path, normalize=pytorch)
    message = str(info.value)
    assert message.startswith(f"{path}: the checkpoint was trained with data.normalize.style=caffe, "
                              "data.normalize.mean=[103.53,116.28,123.675], data.normalize.std=[1,1,1] (its config) "
                              "but this run has data.normalize.style=pytorch, data.normalize.mean=[123.675,116.28,"
                              "103.53], data.normalize.std=[58.395,57.12,57.375]"), message
    assert message.endswith("add data.normalize.style=caffe 'data.normalize.mean=[103.53,116.28,123.675]' "
                            "'data.normalize.std=[1,1,1]'"), message
    # The same input written with the style's defaults (null mean/std), or no data config to compare: loads.
    assert load_model_weights(build("solov2_tiny", num_classes=3), path,
                              normalize={"style": "caffe", "mean": None, "std": None})["source"] == "ours"
    assert load_model_weights(build("solov2_tiny", num_classes=3), path)["source"] == "ours"
    config["model"]["backbone"]["style"] = "caffe"
    torch.save({"model": model.state_dict(), "config": config}, path)
    with pytest.raises(CheckpointError, match=r"trained with model.backbone.style=caffe \(its config\) but this run "
                                              r"has model.backbone.style=pytorch: .* add model.backbone.style=caffe$"):
        load_model_weights(build("solov2_tiny", num_classes=3), path, normalize=caffe)
    with pytest.raises(CheckpointError, match="trained with model.backbone.style=caffe"):
        load_weights(build("solov2_tiny", num_classes=3), str(path), normalize=caffe)


def test_a_class_of_the_saving_script_keeps_the_trust_hint(tmp_path, monkeypatch):
    """A file pickling a class of the script that saved it (__main__) is not a missing package to install: the line
    stays the trust hint."""
    cls = type("Net", (), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "Net", cls, raising=False)
    torch.save({"model": {}, "extra": cls()}, tmp_path / "script.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "script.pth")
    assert "--trust-pickle" in str(info.value) and "install __main__" not in str(info.value)

