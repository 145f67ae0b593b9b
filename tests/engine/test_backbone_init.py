"""ImageNet backbone init of a COCO run: model.pretrained=auto finds torchvision's ResNet file under
data/pretrained/, loads it (logged), and a frozen-BN backbone without it refuses to start in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import compose_train_cfg
from omegaconf import OmegaConf

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data.synthetic import generate_synthetic_coco
from solo_npu.engine.backbone_init import BackboneInitError, backbone_init_file

ROOT = Path(__file__).resolve().parents[2]
# A small 1p run: 64-px images, one iteration, LR 0 (every weight stays what it was loaded as).
TINY_1P = ["+experiment=1p", "data.root=data/coco", "data.img_scale=[96,64]", "data.num_workers=0",
           "data.max_instances=8", "train.epochs=1", "train.max_iters=1", "train.eval_interval=0",
           "train.eval_at_end=false", "train.plots=false", "train.progress=plain", "train.checkpoint_interval=0",
           "optim.base_lr=0.0", "optim.warmup_iters=0", "runtime.device=cpu", "run_dir=run"]


def torchvision_resnet50_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's ResNet-50 names and shapes (torchvision/models/resnet.py:
    ``ResNet`` has conv1/bn1, layer1..4 of ``Bottleneck`` blocks [3, 4, 6, 3] with conv1..3/bn1..3 and
    ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN) in each stage's first block, and ``fc``).
    No ``num_batches_tracked``: resnet50-19c8e357.pth was saved before BatchNorm had it."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["fc.weight"] = torch.randn(1000, 2048, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


def detectron_resnet50_blobs(seed: int = 1) -> dict[str, np.ndarray]:
    """Random arrays under Detectron's caffe2 blob names of MSRA's ResNet-50 (``conv1_w``, ``res_conv1_bn_s/_b``,
    ``res{2..5}_{j}_branch2{a,b,c}_w`` with ``..._bn_s/_b``, ``res{2..5}_0_branch1_w`` + ``_bn_s/_b``): BatchNorm
    is kept as an affine scale and bias, without statistics."""
    rng = np.random.default_rng(seed)
    blobs: dict[str, np.ndarray] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        blobs[f"{name}_w"] = (rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32)

    def affine(name: str, c: int) -> None:
        blobs[f"{name}_s"] = (rng.random(c) + 0.5).astype(np.float32)
        blobs[f"{name}_b"] = (rng.standard_normal(c) * 0.1).astype(np.float32)

    conv("conv1", 64, 3, 7)
    affine("res_conv1_bn", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=2):
        for j in range(blocks):
            for letter, (cout, cin, k) in zip("abc", ((planes, inplanes, 1), (planes, planes, 3),
                                                      (planes * 4, planes, 1))):
                conv(f"res{stage}_{j}_branch2{letter}", cout, cin, k)
                affine(f"res{stage}_{j}_branch2{letter}_bn", cout)
            if j == 0:
                conv(f"res{stage}_{j}_branch1", planes * 4, inplanes, 1)
                affine(f"res{stage}_{j}_branch1_bn", planes * 4)
            inplanes = planes * 4
    return blobs


def mmdet_msra_resnet50_file(blobs: dict[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """What mmdet's tools/model_converters/detectron2pytorch.py saves for these blobs (the conversion behind
    open-mmlab://detectron2/resnet50_caffe, resnet50_msra-5891d200.pth): ``{"state_dict": ...}`` under
    torchvision's names; each affine becomes a BatchNorm with ``weight = _s``, ``bias = _b``, running_mean zeros,
    running_var ones (no num_batches_tracked, no classifier); ``res{i+1}_{j}_branch1`` is
    ``layer{i}.{j}.downsample.0/1`` and ``branch2{a,b,c}`` is ``conv{1,2,3}``/``bn{1,2,3}``."""
    state: dict[str, torch.Tensor] = {}

    def bn(caffe: str, torch_name: str) -> None:
        state[f"{torch_name}.bias"] = torch.from_numpy(blobs[f"{caffe}_b"])
        state[f"{torch_name}.weight"] = torch.from_numpy(blobs[f"{caffe}_s"])
        state[f"{torch_name}.running_mean"] = torch.zeros(blobs[f"{caffe}_s"].shape)
        state[f"{torch_name}.running_var"] = torch.ones(blobs[f"{caffe}_s"].shape)

    state["conv1.weight"] = torch.from_numpy(blobs["conv1_w"])
    bn("res_conv1_bn", "bn1")
    for i, blocks in enumerate((3, 4, 6, 3), start=1):
        for j in range(blocks):
            if j == 0:
                state[f"layer{i}.{j}.downsample.0.weight"] = torch.from_numpy(blobs[f"res{i + 1}_{j}_branch1_w"])
                bn(f"res{i + 1}_{j}_branch1_bn", f"layer{i}.{j}.downsample.1")
            for k, letter in enumerate("abc", start=1):
                state[f"layer{i}.{j}.conv{k}.weight"] = torch.from_numpy(blobs[f"res{i + 1}_{j}_branch2{letter}_w"])
                bn(f"res{i + 1}_{j}_branch2{letter}_bn", f"layer{i}.{j}.bn{k}")
    return {"state_dict": state}


def _small_torchvision_file(path: Path, depth: int = 50) -> None:
    """A ResNet-``depth`` file under torchvision's names whose BatchNorm statistics are trained-like (not the
    identity): what ``auto`` finds and checks. ResNet-50's names are checked against torchvision's own in
    :func:`torchvision_resnet50_state`'s test; the other depths take the backbone's (the same naming scheme)."""
    from solo_npu.models.backbones.resnet import ResNet

    path.parent.mkdir(parents=True, exist_ok=True)
    if depth == 50:
        torch.save(torchvision_resnet50_state(), path)
        return
    g = torch.Generator().manual_seed(depth)
    state = {k: v for k, v in ResNet(depth).state_dict().items() if not k.endswith("num_batches_tracked")}
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = torch.rand(state[key].shape, generator=g) + 0.5
    torch.save(state, path)


@pytest.fixture(scope="module")
def coco_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A launch directory holding data/coco/{train2017,val2017,annotations} (a few 64-px images)."""
    top = tmp_path_factory.mktemp("coco_layout")
    generate_synthetic_coco(top / "data" / "coco", 2, 1, size=64, seed=3)
    yield top
    shutil.rmtree(top, ignore_errors=True)  # two R50 runs' checkpoints with optimizer state, 350 MB each


def _train(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY_1P, *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_1p_loads_data_pretrained_resnet50_and_refuses_without_it(coco_layout: Path) -> None:
    weights = coco_layout / "data" / "pretrained" / "resnet50.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = torchvision_resnet50_state()
    torch.save(state, weights)
    try:
        proc = _train(coco_layout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = (coco_layout / "run" / "train.log").read_text()
        assert "backbone init from data/pretrained/resnet50.pth (missing 0, unexpected 0)" in log
        model = load_checkpoint(coco_layout / "run" / "checkpoints" / "last.pth")["model"]
        backbone = {k[len("backbone."):]: v for k, v in model.items() if k.startswith("backbone.")}
        expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
        assert set(expected) <= set(backbone)
        for key, value in expected.items():
            assert torch.equal(backbone[key].float(), value), key
    finally:
        weights.unlink()

    proc = _train(coco_layout, "run_dir=refused")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("[Error] model.pretrained=auto found no ImageNet ResNet-50 weights")
    for name in ("resnet50.pth", "resnet50-19c8e357.pth", str((coco_layout / "data" / "pretrained").resolve())):
        assert name in lines[0]
    assert not (coco_layout / "refused" / "checkpoints").exists()


def _cfg(pretrained: object, root: str = "data/coco", frozen_stages: int = 1, norm_eval: bool = True,
         depth: int = 50) -> dict:
    return {"model": {"pretrained": pretrained, "backbone": {"depth": depth, "frozen_stages": frozen_stages,
                                                             "norm": "bn", "norm_eval": norm_eval}},
            "data": {"root": root}, "train": {"freeze_backbone": False}}


def test_auto_accepts_the_modelzoo_and_torchvision_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pre = tmp_path / "data" / "pretrained"
    pre.mkdir(parents=True)
    _small_torchvision_file(pre / "resnet101-5d3b4d8f.pth", 101)  # torchvision's download name
    assert backbone_init_file(_cfg("auto", depth=101)) == "data/pretrained/resnet101-5d3b4d8f.pth"
    _small_torchvision_file(pre / "resnet101.pth", 101)  # the ModelZoo guide's name comes first
    assert backbone_init_file(_cfg("auto", depth=101)) == "data/pretrained/resnet101.pth"
    # ModelZoo layout under another root: data.root=/x/data/coco -> /x/data/pretrained
    other = tmp_path / "elsewhere" / "data"
    (other / "pretrained").mkdir(parents=True)
    _small_torchvision_file(other / "pretrained" / "resnet18-5c106cde.pth", 18)
    found = backbone_init_file(_cfg("auto", root=str(other / "coco"), depth=18))
    assert found == str(other / "pretrained" / "resnet18-5c106cde.pth")


def test_when_no_file_is_needed_or_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # resume / fine-tune: the weights come from the checkpoint, nothing is read or required
    assert backbone_init_file(_cfg("auto"), starts_from="last.pth") is None
    assert backbone_init_file(_cfg("missing.pth"), starts_from="SOLOv2_R50_1x.pth") is None
    # scratch on purpose: trainable norms, nothing frozen
    assert backbone_init_file(_cfg("none", frozen_stages=-1, norm_eval=False)) is None
    assert backbone_init_file(_cfg("auto", frozen_stages=-1, norm_eval=False)) is None
    # a frozen-BN backbone from random weights, or a named file that is not there
    with pytest.raises(BackboneInitError, match="model.pretrained=none starts a frozen-BatchNorm ResNet-50"):
        backbone_init_file(_cfg("none"))
    with pytest.raises(BackboneInitError, match="model.pretrained=auto found no ImageNet ResNet-50"):
        backbone_init_file(_cfg("auto", frozen_stages=-1))  # norm_eval alone freezes the statistics
    with pytest.raises(BackboneInitError, match="model.pretrained=missing.pth: no such file"):
        backbone_init_file(_cfg("missing.pth", frozen_stages=-1, norm_eval=False))


def test_the_demo_and_the_smoke_runs_start_from_scratch_on_purpose() -> None:
    for name in ("demo", "smoke"):
        cfg = OmegaConf.to_container(compose_train_cfg([f"+experiment={name}"]), resolve=True)
        assert cfg["model"]["pretrained"] == "none"
        assert backbone_init_file(cfg) is None
    r50 = OmegaConf.to_container(compose_train_cfg(["+experiment=1p"]), resolve=True)
    assert r50["model"]["pretrained"] == "auto"


@pytest.mark.parametrize("style, norm", [("caffe", "pytorch"), ("pytorch", "caffe"), ("caffe", "caffe")])
def test_torchvision_weights_need_a_pytorch_style_rgb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          style: str, norm: str) -> None:
    """torchvision's ImageNet ResNets put the stride on the 3x3 conv and were trained on RGB input normalised by
    the ImageNet mean/std: a caffe-style backbone or BGR input would start from weights used wrongly."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "pretrained").mkdir(parents=True)
    _small_torchvision_file(tmp_path / "data" / "pretrained" / "resnet50-19c8e357.pth")
    for pretrained in ("auto", "data/pretrained/resnet50-19c8e357.pth"):
        cfg = _cfg(pretrained)
        cfg["model"]["backbone"]["style"] = style
        cfg["data"]["normalize"] = {"style": norm}
        with pytest.raises(BackboneInitError) as info:
            backbone_init_file(cfg)
        assert f"this run has model.backbone.style={style} data.normalize.style={norm}" in str(info.value)
        assert "torchvision's ImageNet weights" in str(info.value) and "\n" not in str(info.value)
        cfg["model"]["backbone"]["style"], cfg["data"]["normalize"]["style"] = "pytorch", "pytorch"
        assert backbone_init_file(cfg) == "data/pretrained/resnet50-19c8e357.pth"
        assert backbone_init_file({**cfg, "model": {**cfg["model"], "backbone": {**cfg["model"]["backbone"],
                                                                                  "style": style}}},
                                  starts_from="SOLOv2_R50_3x.pth") is None  # a checkpoint start loads no ImageNet file


def test_torchvision_weights_need_the_imagenet_mean_and_std(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytorch-style RGB run whose explicit mean or std is not ImageNet's (torchvision's transforms: mean
    [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] of 0-1 pixels; x255 on 0-255 pixels) would feed its weights
    other values."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "resnet50-19c8e357.pth"
    _small_torchvision_file(path)
    cfg = _cfg(str(path))
    cfg["data"]["normalize"] = {"style": "pytorch", "mean": None, "std": [1, 1, 1]}
    with pytest.raises(BackboneInitError, match=r"data\.normalize\.style=pytorch data\.normalize\.std=\[1\.0, 1\.0, "
                                                r"1\.0\]: keep both pytorch \(and the ImageNet mean and std\)"):
        backbone_init_file(cfg)
    cfg["data"]["normalize"] = {"style": "pytorch", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    assert backbone_init_file(cfg) == str(path)  # ImageNet's, written out


def test_1p_caffe_style_run_loads_mmdets_msra_resnet50(coco_layout: Path) -> None:
    """A caffe-style run (model.backbone.style=caffe data.normalize.style=caffe, as mmdet's and AdelaiDet's caffe
    configs) finds MSRA's ImageNet weights under mmdet's name, loads every tensor, and logs what it loaded."""
    weights = coco_layout / "data" / "pretrained" / "resnet50_msra-5891d200.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    blobs = detectron_resnet50_blobs()
    torch.save(mmdet_msra_resnet50_file(blobs), weights)
    _small_torchvision_file(coco_layout / "data" / "pretrained" / "resnet50.pth")  # pytorch-style runs' file
    try:
        proc = _train(coco_layout, "model.backbone.style=caffe", "data.normalize.style=caffe", "run_dir=caffe")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log = (coco_layout / "caffe" / "train.log").read_text()
        assert "backbone init from data/pretrained/resnet50_msra-5891d200.pth (missing 0, unexpected 0)" in log
        assert "loaded caffe-style (MSRA) ImageNet ResNet-50 weights" in log
        model = load_checkpoint(coco_layout / "caffe" / "checkpoints" / "last.pth")["model"]
        assert torch.equal(model["backbone.conv1.weight"], torch.from_numpy(blobs["conv1_w"]))
        assert torch.equal(model["backbone.layer3.0.downsample.1.weight"],
                           torch.from_numpy(blobs["res4_0_branch1_bn_s"]))
        assert torch.equal(model["backbone.layer4.2.bn3.bias"], torch.from_numpy(blobs["res5_2_branch2c_bn_b"]))
        assert torch.count_nonzero(model["backbone.layer2.1.bn2.running_mean"]) == 0
        assert torch.equal(model["backbone.layer2.1.bn2.running_var"], torch.ones(128))

        # The same file in the default (pytorch-style, RGB) run: one line before any worker, naming the fix.
        proc = _train(coco_layout, "model.pretrained=data/pretrained/resnet50_msra-5891d200.pth", "run_dir=wrong")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert "holds MSRA's caffe-style ImageNet weights" in lines[0]
        assert "this run has model.backbone.style=pytorch data.normalize.style=pytorch" in lines[0]
        assert "add model.backbone.style=caffe data.normalize.style=caffe" in lines[0]
        assert not (coco_layout / "wrong" / "checkpoints").exists()
    finally:
        weights.unlink()
        (coco_layout / "data" / "pretrained" / "resnet50.pth").unlink()


def test_msra_weights_need_caffe_input_and_fixed_batchnorm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pre = tmp_path / "data" / "pretrained"
    pre.mkdir(parents=True)
    torch.save(mmdet_msra_resnet50_file(detectron_resnet50_blobs()), pre / "resnet50_msra-5891d200.pth")

    def caffe_cfg(**backbone: object) -> dict:
        cfg = _cfg("auto")
        cfg["model"]["backbone"].update(style="caffe", **backbone)
        cfg["data"]["normalize"] = {"style": "caffe", "mean": None, "std": None}
        return cfg

    assert backbone_init_file(caffe_cfg()) == "data/pretrained/resnet50_msra-5891d200.pth"
    assert backbone_init_file(caffe_cfg(norm="frozen_bn")) == "data/pretrained/resnet50_msra-5891d200.pth"
    for wrong, fragment in (({"norm_eval": False}, "model.backbone.norm=bn model.backbone.norm_eval=False"),
                            ({"norm": "gn"}, "model.backbone.norm=gn")):
        with pytest.raises(BackboneInitError, match="replaces that affine by batch statistics") as info:
            backbone_init_file(caffe_cfg(**wrong))
        assert fragment in str(info.value) and "\n" not in str(info.value)
    cfg = caffe_cfg()
    cfg["data"]["normalize"]["std"] = [57.375, 57.12, 58.395]  # the ImageNet std left in place
    with pytest.raises(BackboneInitError, match=r"data.normalize.std=\[57.375, 57.12, 58.395\]: add"):
        backbone_init_file(cfg)
    cfg = caffe_cfg()
    cfg["model"]["backbone"]["style"] = "pytorch"  # BGR input, stride on the 3x3 conv
    cfg["model"]["pretrained"] = "data/pretrained/resnet50_msra-5891d200.pth"
    with pytest.raises(BackboneInitError, match="this run has model.backbone.style=pytorch data.normalize.style=caffe"):
        backbone_init_file(cfg)

    # auto in a caffe-style run: MSRA's names first; torchvision's file is found after them and refused as such
    _small_torchvision_file(pre / "resnet50.pth")
    assert backbone_init_file(caffe_cfg()) == "data/pretrained/resnet50_msra-5891d200.pth"
    (pre / "resnet50_msra-5891d200.pth").unlink()
    with pytest.raises(BackboneInitError, match="resnet50.pth holds torchvision's ImageNet weights") as info:
        backbone_init_file(caffe_cfg())
    assert "MSRA's caffe-style ImageNet weights (mmdet's resnet50_msra-5891d200.pth)" in str(info.value)
    (pre / "resnet50.pth").unlink()
    with pytest.raises(BackboneInitError, match="found no ImageNet ResNet-50 weights") as info:
        backbone_init_file(caffe_cfg())
    assert "resnet50_msra-5891d200.pth,resnet50_caffe-788b5fa3.pth,resnet50.pth" in str(info.value)
    assert "put MSRA's file there" in str(info.value)


def test_unreadable_imagenet_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet50.pth").write_text("not a checkpoint\n")
    with pytest.raises(BackboneInitError, match=r"^model.pretrained=resnet50.pth: .*resnet50.pth") as info:
        backbone_init_file(_cfg("resnet50.pth"))
    assert "\n" not in str(info.value)


def test_deeper_imagenet_file_is_one_line_without_a_loaded_claim(coco_layout: Path) -> None:
    """ResNet-101's blocks beyond ResNet-50's (layer3.6 ...) in model.pretrained: one line naming the keys, and the
    log never says the weights were loaded."""
    state = torchvision_resnet50_state()
    state["layer3.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)  # the first block ResNet-50 does not have
    weights = coco_layout / "resnet101-like.pth"
    torch.save(state, weights)
    proc = _train(coco_layout, f"model.pretrained={weights}", "run_dir=deeper")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert f"[Error] model.pretrained={weights} is not ImageNet ResNet-50 weights for this backbone" in lines[0]
    assert "layer3.6.conv1.weight" in lines[0]
    log = (coco_layout / "deeper" / "train.log").read_text()
    assert "loaded torchvision" not in log and "backbone init from" not in log
