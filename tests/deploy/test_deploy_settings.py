"""Typed deploy settings: conf/deploy/*.yaml and every deploy.* override are checked against
solo_npu.config.deploy_schema; each default is written once (conf/deploy/default.yaml, or
ModelDeployConfig for what a model yaml leaves out)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT, compose_deploy_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from solo_npu.config.deploy_schema import DeployConfig, check_deploy_overrides, unknown_key
from solo_npu.deploy.context import DeployError, resolve_settings, typed_deploy_config
from solo_npu.deploy.pipeline import main as pipeline_main
from solo_npu.deploy.verify import tolerances


def _leaf_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and value:
            keys |= _leaf_keys(value, f"{prefix}{key}.")
    return keys


def test_default_yaml_gives_every_setting_once():
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "deploy" / "default.yaml"))
    cfg = compose_deploy_cfg([])
    assert OmegaConf.get_type(cfg.deploy) is DeployConfig
    assert not OmegaConf.missing_keys(cfg.deploy)  # the schema has types only: the yaml gives every value
    # ... and nothing else adds one: the composed settings are the yaml's, key for key and value for value
    assert OmegaConf.to_container(cfg.deploy) == raw
    # provider options are free-form (onnxruntime's own keys); every other key is a schema field
    assert all(unknown_key(["deploy", *k.split(".")]) is None for k in _leaf_keys(raw))


def test_stages_use_the_yaml_tolerances():
    # verify's rtol was 0.0 in code and 1e-5 in the yaml; now the yaml is the only value
    raw = OmegaConf.load(ROOT / "conf" / "deploy" / "default.yaml").verify
    cfg = compose_deploy_cfg([])
    fp32, fp16 = tolerances(cfg.deploy.verify, "fp32"), tolerances(cfg.deploy.verify, "fp16")
    assert fp32 == {"atol": raw.atol, "rtol": raw.rtol, "score_atol": raw.atol, "iou": raw.iou}  # score_atol null
    assert fp16 == {"atol": raw.fp16.atol, "rtol": raw.fp16.rtol, "score_atol": raw.fp16.score_atol,
                    "iou": raw.fp16.iou}
    assert fp32["rtol"] == 1e-5 and fp16["iou"] == 0.5


def test_model_yaml_decides_null_settings_then_solov2_values():
    # solov2_r50's deploy block gives only input_shape: opset, batch sizes and chip are SOLOv2's
    # (docs/deploy.md: "then to SOLOv2's 800x1216, opset 13, Ascend310P3")
    settings = resolve_settings(compose_deploy_cfg(["model=solov2_r50"]), 32)
    assert (settings.input_shape, settings.opset, settings.batch_sizes, settings.soc_version) == (
        (800, 1216), 13, [1, 4, 8], "Ascend310P3")
    fcos = resolve_settings(compose_deploy_cfg(["model=fcos", "deploy.opset=13"]), 1)
    assert (fcos.input_shape, fcos.opset, fcos.batch_sizes) == ((800, 1333), 13, [1, 4])  # [1,3,800,1333] -> H, W


def test_misspelled_key_on_the_command_line_is_one_line():
    proc = subprocess.run([sys.executable, "deploy.py", "deploy.verfy.atol=1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown setting deploy.verfy.atol")
    assert "did you mean deploy.verify?" in lines[0]


@pytest.mark.parametrize("override, needle", [
    ("deploy.verfy.atol=1", "deploy has no setting 'verfy' (did you mean deploy.verify?)"),
    ("+deploy.benchmark.iter=3", "deploy.benchmark has no setting 'iter' (did you mean deploy.benchmark.iters?)"),
    ("deploy.opset.major=1", "deploy.opset is a value"),
    ("stage=[plan]", "no setting 'stage' (did you mean stages?)"),
])
def test_unknown_overrides_are_named(override, needle):
    message = check_deploy_overrides(["model=solov2", override])
    assert message is not None and needle in message


def test_known_overrides_pass():
    assert check_deploy_overrides([
        "deploy=310p", "model=fcos", "data.root=/x", "runtime.device=cpu", "--cfg", "job", "hydra.run.dir=.",
        "deploy.onnxruntime.provider_options.npu.precision_mode=force_fp16",  # onnxruntime's own option names
        "deploy.verify.fp16.iou=0.3", "deploy.benchmark.iters=3", "stages=[plan]", "+model.deploy.opset=11",
    ]) is None


def test_a_key_added_with_plus_fails_at_run_time(tmp_path, capsys):
    # Hydra lets "+deploy.KEY=" add a key to the typed node; the run refuses it in one line
    cfg = compose_deploy_cfg(["+deploy.verfy.atol=1", f"run_dir={tmp_path}", "stages=[plan]"])
    assert pipeline_main(cfg) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown setting deploy.verfy" in err[0] and "deploy.verify" in err[0]


def test_wrong_type_and_hand_built_configs():
    with pytest.raises(ConfigCompositionException) as info:
        compose_deploy_cfg(["deploy.benchmark.iters=ten"])
    assert "deploy.benchmark.iters" in str(info.value) + str(info.value.__cause__)
    hand = OmegaConf.create({"deploy": {"verify": {"atoll": 1}}})
    with pytest.raises(DeployError, match=r"deploy\.verify\.atoll"):
        typed_deploy_config(hand)


def test_model_deploy_block_is_typed():
    cfg = compose_deploy_cfg(["model=solov2_tiny", "+model.deploy.input_shap=[128,160]"])
    with pytest.raises(DeployError, match=r"model\.deploy\.input_shap"):
        resolve_settings(cfg, 32)


def test_misspelled_key_in_a_deploy_yaml_fails_naming_it(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    with open(conf / "deploy" / "310p.yaml", "a") as f:
        f.write("benchmark:\n  itres: 5\n")
    with initialize_config_dir(str(conf), version_base="1.3"), pytest.raises(ConfigCompositionException) as info:
        compose("deploy", overrides=["deploy=310p"])
    text = f"{info.value} {info.value.__cause__}"
    assert "itres" in text



def test_values_of_the_wrong_type_are_one_line_as_hydra_would_refuse_them():
    """The value checks follow OmegaConf's typed nodes, which Hydra applies next: what they accept passes."""
    from solo_npu.config.deploy_schema import check_overrides
    from solo_npu.config.schema import TrainJobConfig

    refused = {"train.epochs=abc": "'abc' is not an integer", "train.epochs=2.5": "2.5 is not an integer",
               "optim.base_lr=x": "'x' is not a number", "train.eval_at_end=maybe": "'maybe' is not true or false",
               "data.normalize.mean=[1,a,3]": "'a' is not a number",
               "train.batch_size=null": "null is not allowed here",
               "data.normalize.mean=3": "3 is not a list ([a,b,...])"}
    for text, why in refused.items():
        assert check_overrides([text], TrainJobConfig) == f"{text}: {why}"
    accepted = ["train.epochs=3", "train.epochs='3'", "train.eval_at_end=yes", "train.eval_at_end=1",
                "optim.base_lr=1", "data.pad.canvas=null", "checkpoint=null", "train.epochs=${train.batch_size}",
                "train.epochs=1,2", "~checkpoint"]
    assert [t for t in accepted if check_overrides([t], TrainJobConfig) is not None] == []
    assert check_deploy_overrides(["deploy.opset=abc"]) == "deploy.opset=abc: 'abc' is not an integer"
    assert check_deploy_overrides(["deploy.batch_sizes=[1,x]"]) == "deploy.batch_sizes=[1,x]: 'x' is not an integer"


def test_group_choices_are_checked_against_the_config_folder():
    from solo_npu.config.deploy_schema import check_overrides
    from solo_npu.config.schema import TrainJobConfig

    conf = Path(__file__).resolve().parents[2] / "conf"
    message = check_overrides(["model=solov3"], TrainJobConfig, conf)
    assert message.startswith("model=solov3: no model 'solov3' (did you mean solov2? choose from fcos, solov2, ")
    # another case: no close match by spelling (difflib finds none for FCOS), the same name in lower case
    assert check_overrides(["model=FCOS"], TrainJobConfig, conf).startswith(
        "model=FCOS: no model 'FCOS' (did you mean fcos? choose from ")
    assert check_overrides(["+experiment=[1p,finetun]"], TrainJobConfig, conf).startswith(
        "+experiment=[1p,finetun]: no experiment 'finetun' (did you mean finetune?")
    good = ["+experiment=[1p,finetune]", "model=solov2_light_r18", "optim=mmdet_3x", "data=coco", "runtime=default"]
    assert check_overrides([g for g in good if (conf / g.split("=")[0].lstrip("+")).is_dir()], TrainJobConfig,
                           conf) is None
    # Another config folder may add choices: left to Hydra.
    assert check_overrides(["--config-dir=extra", "model=my_detector"], TrainJobConfig, conf) is None
    assert check_deploy_overrides(["deploy=310x"], conf) == "deploy=310x: no deploy '310x' (did you mean 310p? " \
                                                           "choose from 310p, default)"


@pytest.mark.parametrize(("overrides", "named"), [
    (["data=synthetic"], "data=synthetic sets data.num_classes=3"),
    (["data=coco", "data.num_classes=5"], "data.num_classes=5"),  # the later, more precise override set it
    (["~hydra", "model.num_classes=7"], "model.num_classes=7"),  # a deletion (no '=') before it is passed over
])
def test_the_class_override_that_asked_is_named(overrides, named):
    from solo_npu.deploy.pipeline import mark_explicit_classes

    cfg = compose_deploy_cfg([o for o in overrides if "=" in o])
    mark_explicit_classes(cfg, overrides)
    assert cfg.num_classes_from == named
