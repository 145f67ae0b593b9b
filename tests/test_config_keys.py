"""Every key of every yaml in conf/ is a setting something reads.

- Sections with a schema (solo_npu/config/schema.py, deploy_schema.py): conf/config.yaml, its groups and
  experiments are walked from TrainJobConfig (data: DataConfig, runtime: RuntimeConfig), conf/deploy.yaml
  and conf/deploy/ from DeployJobConfig: each key is a schema field, and each schema field is named in the
  code that reads the config (an attribute or a string key in solo_npu/, train.py or deploy.py, or an
  interpolation in conf/).
- Model yamls (and the ``model:`` parts of experiments): each top-level key is an argument of the builder
  named by ``_target_`` (inspect.signature) that the builder's body uses; nested keys (``backbone.depth``)
  go to the classes the builder passes them to, so building the model (on the meta device) rejects an
  unknown one; the ``deploy:`` block is ModelDeployConfig's.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import typing
from dataclasses import fields, is_dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_method

from solo_npu.config import register_configs
from solo_npu.config.deploy_schema import DeployJobConfig, ModelDeployConfig, unknown_key
from solo_npu.config.schema import DataConfig, RuntimeConfig, TrainJobConfig
from solo_npu.models import build_model, split_model_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SKIP_TOP = {"defaults", "hydra"}  # Hydra's own: the defaults list and hydra's settings


def _schema_for(path: Path) -> tuple[type, tuple[str, ...]]:
    """(root schema, package) of a yaml file: keys are walked from the root of config.yaml or deploy.yaml."""
    group = path.parent.name if path.parent != CONF else None
    schema = DeployJobConfig if path.name == "deploy.yaml" or group == "deploy" else TrainJobConfig
    header = re.match(r"# @package (\S+)", path.read_text())
    package = header.group(1) if header else (group or "_global_")
    return schema, () if package == "_global_" else tuple(package.split("."))


def _key_paths(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        out.append((*prefix, str(key)))
        out += _key_paths(value, (*prefix, str(key)))
    return out


def _yaml_files() -> list[Path]:
    return sorted(CONF.rglob("*.yaml"))


def _walk(path: Path) -> list[tuple[str, ...]]:
    """Every key path of a yaml file from the config root (the defaults list and hydra's settings left out)."""
    text = yaml.safe_load(path.read_text()) or {}
    _, package = _schema_for(path)
    return [(*package, *p) for p in _key_paths(text) if p[0] not in SKIP_TOP]


@cache
def _code_words() -> set[str]:
    """Attribute names and string constants in the code that reads configs, and the keys the yaml files
    read themselves through interpolations (``${output_root}`` in hydra.run.dir)."""
    words = {w for p in _yaml_files() for ref in re.findall(r"\$\{([^}]*)\}", p.read_text())
             for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", ref)}
    files = [*sorted((ROOT / "solo_npu").rglob("*.py")), ROOT / "train.py", ROOT / "deploy.py"]
    for file in files:
        if "config" in file.relative_to(ROOT).parts[:2]:
            continue  # the schemas themselves
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute):
                words.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
            elif isinstance(node, ast.keyword) and node.arg:
                words.add(node.arg)
    return words


def _schema_leaves(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        inner = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_args(tp) else tp
        if is_dataclass(inner):
            out += _schema_leaves(inner, (*prefix, f.name))
        elif tp is not typing.Any:
            out.append((*prefix, f.name))
    return out


@pytest.mark.parametrize("path", [p for p in _yaml_files() if p.parent.name != "model"],
                         ids=lambda p: str(p.relative_to(CONF)))
def test_schema_sections_have_no_unknown_key(path):
    schema, _ = _schema_for(path)
    unknown = [why for key in _walk(path) if key[0] != "model" and (why := unknown_key(list(key), schema))]
    assert not unknown, unknown


@pytest.mark.parametrize("schema", [TrainJobConfig, DeployJobConfig, DataConfig, RuntimeConfig])
def test_every_schema_field_is_read_by_code(schema):
    unread = [".".join(p) for p in _schema_leaves(schema) if p[-1] not in _code_words()]
    assert not unread, f"settings no code reads: {unread}"


def _builder_arguments(target: str) -> tuple[set[str], set[str]]:
    """(argument names of the builder, those its body uses)."""
    builder = get_method(target)
    params = inspect.signature(builder).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{target} takes **kwargs"
    tree = ast.parse(textwrap.dedent(inspect.getsource(builder))).body[0]
    used = {n.id for stmt in tree.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    return set(params), used & set(params)


def _model_sections() -> list[tuple[str, dict, str]]:
    """(label, model section, its _target_) of every model yaml and every experiment's model part."""
    register_configs()
    out = []
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for path in sorted((CONF / "model").glob("*.yaml")):
            cfg = compose("deploy", overrides=[f"model={path.stem}"])
            out.append((f"model/{path.name}", yaml.safe_load(path.read_text()), cfg.model._target_))
        for path in sorted((CONF / "experiment").glob("*.yaml")):
            section = (yaml.safe_load(path.read_text()) or {}).get("model")
            if section:
                cfg = compose("config", overrides=[f"+experiment={path.stem}"])
                out.append((f"experiment/{path.name}", section, cfg.model._target_))
    return out


def test_model_keys_are_builder_arguments_it_uses():
    problems = []
    for label, section, target in _model_sections():
        accepted, used = _builder_arguments(target)
        for key in section:
            if key in ("_target_", "defaults"):
                continue
            if key == "deploy":
                problems += [f"{label}: {why}" for p in _key_paths(section["deploy"])
                             if (why := unknown_key(list(p), ModelDeployConfig))]
            elif key not in accepted:
                problems.append(f"{label}: {key} is no argument of {target}")
            elif key not in used:
                problems.append(f"{label}: {target} takes {key} but never uses it")
    assert not problems, problems


def test_nested_model_keys_reach_a_constructor():
    # build_solov2 passes backbone / neck / head / test on as keyword arguments: an unknown nested key is a
    # TypeError of the class it reaches, so building every composed model on the meta device checks them
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfgs = [compose("deploy", overrides=[f"model={p.stem}"]).model for p in sorted((CONF / "model").glob("*.yaml"))]
        cfgs += [compose("config", overrides=[f"+experiment={p.stem}"]).model
                 for p in sorted((CONF / "experiment").glob("*.yaml"))]
    for cfg in cfgs:
        build_model(cfg, num_classes=3, device="meta")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        bad = compose("deploy", overrides=["model=solov2_tiny", "+model.backbone.depht=18"]).model
    with pytest.raises(Exception, match="unexpected keyword argument 'depht'"):
        build_model(bad, num_classes=3, device="meta")


def test_checkpoint_source_comment_lists_every_layout():
    # conf/config.yaml and conf/deploy.yaml document checkpoint_source: auto, ours and every layout a model
    # of conf/model/ reads (its checkpoint_layouts)
    register_configs()
    layouts = {"auto", "ours"}
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for path in sorted((CONF / "model").glob("*.yaml")):
            spec, _ = split_model_config(compose("deploy", overrides=[f"model={path.stem}"]).model, num_classes=3)
            layouts |= set(type(build_model(spec, device="meta")).checkpoint_layouts)
    assert layouts >= {"mmdet", "solo", "torchvision", "fcos", "yolact_edge", "ssd_resnet34"}
    for name in ("config.yaml", "deploy.yaml"):
        lines = (CONF / name).read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("checkpoint_source:"))
        comment = " ".join(line.split("#", 1)[1] for line in lines[start:start + 3] if "#" in line
                           and (line.startswith("checkpoint_source:") or line.startswith(" ")))
        documented = set(re.findall(r"[a-z_0-9]+", comment.split("(")[0] + " " + comment))
        assert layouts <= documented, (name, layouts - documented)


def test_config_yaml_values_equal_the_schema_defaults():
    """conf/config.yaml writes out the typed sections for readers; a value there that differs from the
    schema's default would make the two disagree about what a run gets when a key is left out."""
    from dataclasses import MISSING as NO_DEFAULT

    written = yaml.safe_load((CONF / "config.yaml").read_text())
    defaults = TrainJobConfig()
    differ = []
    for f in fields(TrainJobConfig):
        value = written.get(f.name)
        if not isinstance(value, dict) or f.default_factory is NO_DEFAULT:
            continue
        section = getattr(defaults, f.name)
        differ += [f"{f.name}.{k}: yaml {v!r}, schema {getattr(section, k)!r}" for k, v in value.items()
                   if getattr(section, k) != v]
    assert not differ, differ
