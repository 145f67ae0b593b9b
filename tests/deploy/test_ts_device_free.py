"""TorchScript exports hold no device: a .ts traced on the CPU builds its tensors on the device it runs on.

``torch.jit.trace`` records ``device=x.device`` of a factory call (``torch.arange``, ``torch.linspace``) and
``t.to(x.device)`` as a ``prim::Constant[value="cpu"]``; a file exported on the CPU then made those tensors on
the CPU when loaded with ``map_location="cuda"`` or run on an NPU. Every model yaml is traced here as the export
stage traces it (``ModelAdapter.export_module``, ``module_example``, ``export_torchscript``), and the graph of the
file read back must have no Device constant. (A run on a second device is not possible without one:
``torch.jit.load(map_location="meta")`` fails on the constant tensors, which need ``aten::equal``, and the
models do not trace on the meta device; solo_npu/models/ops/factories.py says how the graphs stay device-free.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.deploy.adapters import ModelAdapter
from solo_npu.deploy.export import export_torchscript, module_example
from solo_npu.models import build_model
from solo_npu.models.ops.factories import arange_on, linspace_on, to_device_of

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "conf" / "model"
# a yaml with a defaults list (solov2.yaml: solov2_r50 plus deploy settings) builds a model listed on its own
MODELS = sorted(p.stem for p in MODEL_DIR.glob("*.yaml") if "defaults" not in OmegaConf.load(p))
# export modes with code of their own
VARIANTS = [(name, {}) for name in MODELS] + [("solov2_tiny", {"test.export_exact_flag": True}),
                                               ("yolact_edge", {"export_mode": "features"})]


def device_constants(graph: torch.Graph) -> list[str]:
    """The ops that take a Device constant, with their source line, in ``graph`` and its sub-blocks."""
    found = []

    def walk(block) -> None:
        for node in block.nodes():
            for sub in node.blocks():
                walk(sub)
            if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
                for use in node.output().uses():
                    source = str(use.user).rsplit("#", 1)[-1].strip()
                    found.append(f"{use.user.kind()} ({node.output().toIValue()}) at {source}")

    walk(graph)
    return found


def build(name: str, overrides: dict) -> torch.nn.Module:
    cfg = OmegaConf.load(MODEL_DIR / f"{name}.yaml")
    cfg.pop("deploy", None)  # the yaml's deploy: block is not the builder's
    cfg.num_classes = 3
    if "pretrained" in cfg:
        cfg.pretrained = "none"
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_every_model_is_covered() -> None:
    assert {"fcos", "solov2_r50", "solov2_r101", "solov2_light_r18", "solov2_tiny", "ssd_resnet34",
            "yolact_edge"} <= set(MODELS)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load is deprecated in newer torch
@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=[
    name + "".join(f"-{k}={v}" for k, v in overrides.items()) for name, overrides in VARIANTS])
def test_exported_torchscript_has_no_device_constant(name: str, overrides: dict, tmp_path: Path) -> None:
    module = ModelAdapter(build(name, overrides)).export_module()
    example = module_example(module, 1, (320, 320) if name == "ssd_resnet34" else (96, 128))
    path = export_torchscript(module, example, tmp_path / "model_b1.ts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    assert device_constants(loaded.inlined_graph) == []
    with torch.no_grad():
        expected, got = module(example), loaded(example)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):  # the same model (the TorchScript interpreter's float sums may differ by 1 ulp)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_factories_equal_the_device_calls_and_trace_without_device(dtype: torch.dtype) -> None:
    ref = torch.randn(2, 3, 5, 7).to(dtype)
    assert torch.equal(linspace_on(ref, -1, 1, 7), torch.linspace(-1, 1, 7, dtype=dtype, device=ref.device))
    assert linspace_on(ref, -1, 1, 7).dtype == dtype
    assert torch.equal(arange_on(ref, 9, torch.float32), torch.arange(9, dtype=torch.float32))
    assert arange_on(ref, 9).dtype == torch.long
    priors = torch.rand(4, 4, dtype=torch.float64)
    assert to_device_of(priors, ref) is priors  # already there: no copy, its dtype kept

    def build_from(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (linspace_on(x, -1, 1, x.shape[-1]), arange_on(x, x.shape[-2]), to_device_of(priors, x))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning; torch.jit.trace's deprecation in newer torch
        traced = torch.jit.trace(build_from, (ref,), check_trace=False)
    assert device_constants(traced.inlined_graph) == []
    for a, b in zip(traced(ref), build_from(ref)):
        assert a.dtype == b.dtype and torch.equal(a, b)
