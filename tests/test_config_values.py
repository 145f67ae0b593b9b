"""Numeric settings outside their range are one line naming the key, before any worker starts; every shipped
experiment, data, optimiser and model choice is inside the ranges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from config_support import CONF, ROOT, compose_config

from solo_npu.config.values import RANGES, ConfigValueError, check_values, choices


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_is_inside_the_ranges(experiment: str) -> None:
    cfg = compose_config(f"+experiment={experiment}")
    check_values(cfg)
    for key in [*RANGES, *choices()]:  # every checked key exists in the composed config (a renamed one would go
        # unchecked)
        node = cfg
        for part in key.split("."):
            node = node[part]


@pytest.mark.parametrize("group", ["optim", "data"])
def test_every_optimiser_and_data_choice_is_inside_the_ranges(group: str) -> None:
    for path in sorted((CONF / group).glob("*.yaml")):
        check_values(compose_config(f"{group}={path.stem}"))


@pytest.mark.parametrize("override,message", [
    ("train.epochs=0", "train.epochs=0: must be >= 1"),
    ("train.batch_size=-2", "train.batch_size=-2: must be >= 1"),
    ("train.eval_batch_size=0", "train.eval_batch_size=0: must be >= 1"),
    ("train.max_iters=0", "train.max_iters=0: must be >= 1 or null"),
    ("train.workers=-1", "train.workers=-1: must be >= 0 or null"),
    ("train.log_interval=0", "train.log_interval=0: must be >= 1"),
    ("optim.base_lr=-1", "optim.base_lr=-1.0: must be >= 0"),
    ("optim.grad_clip=0", "optim.grad_clip=0.0: must be > 0 or null"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio=1.5: must be in (0, 1]"),
    ("optim.base_lr=nan", "optim.base_lr=nan: must be >= 0"),
    ("launcher.nproc_per_node=0", "launcher.nproc_per_node=0: must be >= 1"),
    ("launcher.master_port=70000", "launcher.master_port=70000: must be in [0, 65535]"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("data.flip_prob=2", "data.flip_prob=2.0: must be in [0, 1]"),
    # string settings read only once the run has started: each was a traceback there, some without the key
    ("optim.name=adam", "optim.name=adam: must be one of sgd, adamw"),
    ("optim.policy=poly", "optim.policy=poly: must be one of step, cosine"),
    ("amp.dtype=fp8", "amp.dtype=fp8: must be one of fp16, float16, bf16, bfloat16"),
    ("train.progress=fancy", "train.progress=fancy: must be one of auto, tqdm, plain"),
    ("mode=evaluate", "mode=evaluate: must be one of train, eval"),
    ("data.pad.mode=fix", "data.pad.mode=fix: must be one of divisor, fixed"),
    ("data.pad.position=middle", "data.pad.position=middle: must be one of top_left, centre, center"),
    ("amp.loss_scale=abc", "amp.loss_scale=abc: must be dynamic or a number > 0 (128: apex O1's)"),
    ("amp.loss_scale=0", "amp.loss_scale=0: must be dynamic or a number > 0 (128: apex O1's)"),
])
def test_value_outside_its_range_names_the_key(override: str, message: str) -> None:
    cfg = compose_config("+experiment=smoke", override)
    with pytest.raises(ConfigValueError) as info:
        check_values(cfg)
    assert str(info.value) == message


@pytest.mark.parametrize("override", ["optim.name=AdamW", "amp.loss_scale=128", "amp.loss_scale=dynamic",
                                      "data.pad.position=center", "mode=eval", "amp.dtype=bfloat16",
                                      "amp.dtype=float16"])
def test_values_the_readers_take_pass(override: str) -> None:
    check_values(compose_config("+experiment=smoke", override))


def test_node_rank_must_be_below_nnodes() -> None:
    check_values(compose_config("+experiment=smoke", "launcher.nnodes=2", "launcher.node_rank=1"))
    with pytest.raises(ConfigValueError, match=r"launcher.node_rank=2: must be below launcher.nnodes=2 \(0..1\)"):
        check_values(compose_config("+experiment=smoke", "launcher.nnodes=2", "launcher.node_rank=2"))


def test_train_py_says_it_in_one_line_before_any_worker(tmp_path: Path) -> None:
    """Before, train.batch_size=0 was a traceback from the sampler and train.epochs=0 ended with status ok
    having trained nothing."""
    for override, line in (("train.batch_size=0", "[Error] train.batch_size=0: must be >= 1"),
                           ("train.epochs=0", "[Error] train.epochs=0: must be >= 1")):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "+experiment=smoke", "data=synthetic",
                               f"data.root={tmp_path / 'data'}", f"output_root={tmp_path / 'out'}", override],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1] == line, proc.stderr[-3000:]
        assert not (tmp_path / "data").exists()  # no worker started: the synthetic set was not generated


@pytest.mark.parametrize("style, mean", [("caffe", [123.675, 116.28, 103.53]), ("pytorch", [103.53, 116.28, 123.675])])
def test_a_mean_of_the_other_channel_order_is_refused(style, mean):
    """data.normalize.style=caffe with the RGB ImageNet mean left in place swaps the red and blue means."""
    from solo_npu.config.values import ConfigValueError, check_values

    cfg = {"data": {"normalize": {"style": style, "mean": mean, "std": None}}}
    with pytest.raises(ConfigValueError, match=rf"is the \w+ style's mean, but data.normalize.style={style} feeds "):
        check_values(cfg)
    for fine in (None, [1.0, 2.0, 3.0], mean[::-1]):
        check_values({"data": {"normalize": {"style": style, "mean": fine, "std": None}}})
