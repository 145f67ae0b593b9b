"""Backends as objects: the registry, device ids, ONNX Runtime's providers and matched detections."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_support import CPU, CUDA1, NPU0, tiny_onnx

from solo_npu.deploy import runners
from solo_npu.deploy.backends import BACKENDS, build_backends
from solo_npu.deploy.context import DeployError
from solo_npu.deploy.verify import match_detections, tolerances


def test_cann_provider_whenever_offered_with_device_id(providers):
    providers("CANNExecutionProvider")
    opts = {"npu": {"precision_mode": "force_fp16"}}
    # no torch_npu (the run device is the CPU): still the CANN provider, on the chosen chip
    assert runners.ort_providers(CPU, opts, "auto", device_id=3) == [
        ("CANNExecutionProvider", {"device_id": 3, "dump_om_model": False, "precision_mode": "force_fp16"}),
        "CPUExecutionProvider"]
    assert runners.ort_device(CPU, "auto", 3) == "npu:3"
    assert runners.ort_providers(NPU0, {}, "npu") == [
        ("CANNExecutionProvider", {"device_id": 0, "dump_om_model": False}), "CPUExecutionProvider"]
    assert runners.ort_providers(NPU0, {"npu": {"dump_om_model": True}}, "npu")[0][1]["dump_om_model"] is True
    # runtime.device=cpu asked for the CPU: no accelerator provider
    assert runners.ort_providers(CPU, opts, "cpu", device_id=3) == ["CPUExecutionProvider"]
    assert runners.ort_device(CPU, "cpu", 3) == "cpu"


def test_cuda_provider_device_id_and_missing_provider_warning(providers, caplog):
    providers("CUDAExecutionProvider", "CANNExecutionProvider")
    assert runners.ort_providers(CUDA1, {}, "cuda") == [("CUDAExecutionProvider", {"device_id": 1}),
                                                        "CPUExecutionProvider"]
    assert runners.ort_providers(CUDA1, {}, "cuda", device_id=0)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    providers()  # plain onnxruntime on an NPU host
    with caplog.at_level(logging.WARNING):
        assert runners.ort_providers(NPU0, {}, "npu") == ["CPUExecutionProvider"]
    assert "install onnxruntime-cann" in caplog.text
    assert runners.ort_device(NPU0, "npu") == "cpu"



@pytest.fixture
def provider_fails(monkeypatch):
    """``onnxruntime.InferenceSession`` whose accelerator provider fails to start, as a CANN or CUDA provider
    does without its driver. The real Python layer handles it (onnxruntime 1.32,
    capi/onnxruntime_inference_collection.py): ``InferenceSession.__init__`` (lines 693-707) catches the
    RuntimeError of ``_create_inference_session``, prints "Falling back to ['CPUExecutionProvider'] and
    retrying." and builds the session again with ``_fallback_providers``, ``["CPUExecutionProvider"]`` unless
    TensorRT is asked for (lines 724-731); ``get_providers()`` then answers ``['CPUExecutionProvider']``."""
    import onnxruntime

    class ProviderFails(onnxruntime.InferenceSession):
        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
            failing = [n for n in names if n in ("CANNExecutionProvider", "CUDAExecutionProvider")]
            if failing:
                self._fallback_providers = ["CPUExecutionProvider"]  # what the real method sets first
                raise RuntimeError(f"{failing[0]} failed to start (no driver)")
            return super()._create_inference_session(providers, provider_options, disabled_optimizers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", ProviderFails)


def test_onnxruntime_fallback_to_cpu_is_a_warning_and_reported_as_cpu(make_ctx, providers, provider_fails,
                                                                      tmp_path, caplog, capsys):
    providers("CANNExecutionProvider")  # onnxruntime-cann offers CANN; here it cannot start
    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.device_id=1")
    (backend,) = build_backends(ctx)
    assert backend.device == "npu:1"  # before a session exists: what the offered provider would run on
    manifest = {"files": {"onnx": {"1": str(tiny_onnx(tmp_path / "tiny.onnx"))}}}
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        runner = backend.runner(1, manifest)
    assert "Falling back to ['CPUExecutionProvider'] and retrying." in capsys.readouterr().out
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CANNExecutionProvider" in warnings[0] and "CPUExecutionProvider" in warnings[0]
    # the session's provider, not the offered one, decides what the backend reports
    assert backend.describe() == {"backend": "onnxruntime", "device": "cpu", "timing": "model only",
                                  "precision": "fp32", "memory": "process RSS"}
    x = np.linspace(-1, 1, 192, dtype=np.float32).reshape(1, 3, 8, 8)
    np.testing.assert_array_equal(runner.session.run(None, {"input": x})[0], np.maximum(x, 0))


def test_onnxruntime_cuda_fallback_to_cpu(providers, provider_fails, tmp_path, caplog):
    providers("CUDAExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        runner = runners.OnnxRuntimeRunner(tiny_onnx(tmp_path / "tiny.onnx"), ["output"], CUDA1, requested="cuda")
    assert runner.providers[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert (runner.provider, runner.device_name) == ("CPUExecutionProvider", "cpu")
    assert "asked for CUDAExecutionProvider but the session runs on CPUExecutionProvider" in caplog.text
    providers()  # plain onnxruntime asked for the CPU: the provider in use is the one asked for, no WARNING
    caplog.clear()
    runner = runners.OnnxRuntimeRunner(tmp_path / "tiny.onnx", ["output"], CPU, requested="cpu")
    assert (runner.provider, runner.device_name, caplog.text) == ("CPUExecutionProvider", "cpu", "")


@pytest.fixture
def cann_session(monkeypatch, providers):
    """onnxruntime-cann's ``InferenceSession`` with a CANN provider that starts (computing on the CPU here) and
    records its options; ``knows_dump_om = False`` is a release without the ``dump_om_model`` option, which
    refuses it as onnxruntime refuses any unknown one (ProviderOptionsParser::Parse: 'Unknown provider option:
    "dump_om_model".'); the real Python layer then prints "EP Error ..." and falls back to the CPU."""
    import onnxruntime

    class CannSession(onnxruntime.InferenceSession):
        knows_dump_om, seen = True, []

        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            cann = [p[1] for p in providers if isinstance(p, tuple) and p[0] == "CANNExecutionProvider"]
            self.on_cann = bool(cann)
            if cann:
                CannSession.seen.append(dict(cann[0]))
                if "dump_om_model" in cann[0] and not CannSession.knows_dump_om:
                    self._fallback_providers = ["CPUExecutionProvider"]
                    raise RuntimeError('Unknown provider option: "dump_om_model".')
            kept = [p for p in providers if not isinstance(p, tuple)]
            return super()._create_inference_session(kept, None, disabled_optimizers)

        def get_providers(self):
            return ["CANNExecutionProvider", *super().get_providers()] if self.on_cann else super().get_providers()

    providers("CANNExecutionProvider")
    monkeypatch.setattr(onnxruntime, "InferenceSession", CannSession)
    return CannSession


def test_cann_provider_is_told_not_to_save_om_files_in_the_working_directory(cann_session, tmp_path, caplog,
                                                                               capsys):
    """The CANN provider saves each session's .om in the working directory unless dump_om_model is false
    (microsoft/onnxruntime PR #20075: the option "defaults to True"); a release without the option refuses it."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    runner = runners.OnnxRuntimeRunner(model, ["output"], NPU0, requested="npu")
    assert cann_session.seen == [{"device_id": 0, "dump_om_model": False}]
    assert runner.provider == "CANNExecutionProvider"
    runners.OnnxRuntimeRunner(model, ["output"], NPU0, {"provider_options": {"npu": {"dump_om_model": True}}},
                              requested="npu")
    assert cann_session.seen[-1] == {"device_id": 0, "dump_om_model": True}  # the user's own value
    cann_session.knows_dump_om, cann_session.seen = False, []
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        runner = runners.OnnxRuntimeRunner(model, ["output"], NPU0, requested="npu")
    assert cann_session.seen == [{"device_id": 0, "dump_om_model": False}, {"device_id": 0}]  # asked again without
    assert (runner.provider, runner.device_name, runner.providers[0]) == (
        "CANNExecutionProvider", "npu:0", ("CANNExecutionProvider", {"device_id": 0}))
    assert 'Unknown provider option: "dump_om_model"' in capsys.readouterr().out  # onnxruntime's lines, as printed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "does not take the CANN provider option dump_om_model" in warnings[0]


def test_session_errors_advise_re_export_only_for_the_model_file(providers, monkeypatch, tmp_path):
    """onnxruntime says "Load model from <path> failed:..." when the file is the problem; a provider that fails
    without falling back (EPFail is no RuntimeError, so InferenceSession.__init__ does not catch it) is not."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    providers()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DeployError, match=r"Load model from .*broken.onnx failed.*\(re-export with stages="):
        runners.OnnxRuntimeRunner(broken, ["output"], CPU, requested="cpu")

    class ProviderFails(onnxruntime.InferenceSession):
        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            raise EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : CANN: aclrtSetDevice failed")

    monkeypatch.setattr(onnxruntime, "InferenceSession", ProviderFails)
    with pytest.raises(DeployError) as err:
        runners.OnnxRuntimeRunner(tiny_onnx(tmp_path / "tiny.onnx"), ["output"], CPU, requested="cpu")
    assert str(err.value).endswith(": [ONNXRuntimeError] : 11 : EP_FAIL : CANN: aclrtSetDevice failed")
    assert "re-export" not in str(err.value) and "['CPUExecutionProvider']" in str(err.value)


@pytest.mark.parametrize("options, precision", [
    ([], "fp16"),  # GE's default precision mode: force_fp16
    (["deploy=310p"], "fp16"),  # the preset leaves the provider's precision at its default
    (["+deploy.onnxruntime.provider_options.npu.precision_mode=allow_fp32_to_fp16"], "fp16"),
    (["+deploy.onnxruntime.provider_options.npu.precision_mode=must_keep_origin_dtype"], "fp32"),
    (["+deploy.onnxruntime.provider_options.npu.precision_mode=force_fp32"], "fp16"),  # Cube operators take fp16 inputs
    (["+deploy.onnxruntime.provider_options.npu.precision_mode_v2=origin"], "fp32"),
    (["+deploy.onnxruntime.provider_options.npu.precision_mode_v2=fp16"], "fp16"),
])
def test_cann_provider_precision_picks_verify_tolerances(make_ctx, providers, monkeypatch, tmp_path, options,
                                                         precision):
    """The CANN provider runs GE's default precision (fp16) unless its options keep float32."""
    import onnxruntime

    class CannRuns(onnxruntime.InferenceSession):  # a CANN provider that starts (computing on the CPU here)
        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            kept = [p for p in providers if (p[0] if isinstance(p, tuple) else p) != "CANNExecutionProvider"]
            return super()._create_inference_session(kept, provider_options, disabled_optimizers)

        def get_providers(self):
            return ["CANNExecutionProvider", *super().get_providers()]

    providers("CANNExecutionProvider")
    monkeypatch.setattr(onnxruntime, "InferenceSession", CannRuns)
    ctx = make_ctx(*options)
    backend = BACKENDS["onnxruntime"](ctx)
    assert (backend.device, backend.precision) == ("npu:0", precision)
    backend.runner(1, {"files": {"onnx": {"1": str(tiny_onnx(tmp_path / "tiny.onnx"))}}})
    assert (backend.device, backend.precision) == ("npu:0", precision)  # the session runs CANN: unchanged
    expected = ctx.deploy_cfg.verify.fp16 if precision == "fp16" else ctx.deploy_cfg.verify
    assert tolerances(ctx.deploy_cfg.verify, backend.precision)["iou"] == expected.iou
    providers()  # no CANN provider: the CPU, in float32 whatever the CANN options say
    backend = BACKENDS["onnxruntime"](ctx)
    assert (backend.device, backend.precision) == ("cpu", "fp32")


def test_registry_device_ids_and_timing_scopes(make_ctx, providers):
    providers()
    ctx = make_ctx("deploy.backends=[pytorch,onnxruntime,om,torch_aie]", "deploy.device_id=2")
    backends = {b.name: b for b in build_backends(ctx)}
    assert list(backends) == ["pytorch", "onnxruntime", "om", "torch_aie"]
    assert set(BACKENDS) == {"pytorch", "torchscript", "onnxruntime", "om", "torch_aie"}
    assert backends["om"].device == "npu:2" and backends["torch_aie"].device == "npu:2"
    assert backends["pytorch"].device == "cpu" and backends["onnxruntime"].device == "cpu"
    assert {n: b.timing_scope for n, b in backends.items()} == {
        "pytorch": "model only", "onnxruntime": "model only", "om": "device compute from ais_bench",
        "torch_aie": "model only"}
    # what the infer stage's seconds cover: om's are the whole ais_bench run, not its NPU compute time
    assert {n: b.infer_timing for n, b in backends.items()} == {
        "pytorch": "model only", "onnxruntime": "model only",
        "om": "ais_bench run, wall time including its start, model load and file I/O", "torch_aie": "model only"}
    assert backends["om"].describe()["timing"] == backends["om"].infer_timing
    # ATC's default precision on 310P and torch_aie FP16 are half precision; their verify tolerances follow
    assert backends["om"].precision == "fp16" and backends["torch_aie"].precision == "fp16"
    assert tolerances(ctx.deploy_cfg.verify, "fp16")["iou"] == 0.5
    assert backends["om"].unavailable(1).startswith("no .om model")
    with pytest.raises(DeployError, match=r"unknown backend\(s\) \['tensorrt'\]"):
        build_backends(ctx, ["tensorrt"])


def _dets(boxes, labels, scores, low=True):
    """Detections plus, with ``low``, one low-scoring box far away that sets the score cut at 0.1."""
    boxes, labels, scores = list(boxes), list(labels), list(scores)
    if low:
        boxes, labels, scores = [*boxes, [80, 80, 90, 90]], [*labels, 0], [*scores, 0.1]
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def test_matching_ignores_order_and_catches_real_differences():
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], [1, 2, 1], [0.9, 0.50001, 0.5])
    # the near-tied pair reordered (as float rounding reorders a top-k), boxes moved by a tenth of a pixel
    reordered = _dets([[0, 0, 10, 10], [50, 50, 60, 70.1], [20, 20, 40, 40]], [1, 1, 2], [0.9, 0.50002, 0.5])
    out = match_detections(ref, reordered, iou=0.9, score_atol=1e-4)
    assert (out["matched"], out["unmatched"]) == (4, 0) and out["score_max_diff"] == pytest.approx(2e-5, abs=1e-6)
    assert out["min_iou"] == pytest.approx(200 / 201, rel=1e-5)  # 10x20 box grown to 10x20.1: inter / union
    wrong_label = _dets([[0, 0, 10, 10], [50, 50, 60, 70], [20, 20, 40, 40]], [1, 1, 3], [0.9, 0.5, 0.50001])
    assert match_detections(ref, wrong_label, 0.9, 1e-4)["unmatched"] == 2  # one each side, above the cut
    shifted = _dets([[0, 0, 10, 10], [25, 20, 45, 40], [50, 50, 60, 70]], [1, 2, 1], [0.9, 0.50001, 0.5])
    assert match_detections(ref, shifted, 0.9, 1e-4)["unmatched"] == 2  # IoU 0.6 < 0.9
    rescored = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], [1, 2, 1], [0.8, 0.50001, 0.5])
    assert match_detections(ref, rescored, 0.9, 1e-4)["unmatched"] == 2


def test_matching_allows_the_score_cut_either_way():
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.05004], low=False)
    cand = _dets([[0, 0, 10, 10]], [1], [0.9], low=False)  # the second fell just under the threshold
    assert match_detections(ref, cand, 0.9, 1e-4, score_floor=0.05)["unmatched"] == 0
    assert match_detections(cand, ref, 0.9, 1e-4, score_floor=0.05)["unmatched"] == 0
    assert match_detections(ref, cand, 0.9, 1e-4)["unmatched"] == 1  # no threshold known: nothing excused
    empty = _dets(np.zeros((0, 4)), [], [], low=False)
    assert match_detections(ref, empty, 0.9, 1e-4, score_floor=0.05)["unmatched"] == 1


def test_a_missing_detection_away_from_the_cuts_is_a_mismatch():
    """Only a detection the other backend may have cut is excused: one detection against none, or the lower of
    two well above the threshold missing, is a mismatch however low it ranks in its own set."""
    one = _dets([[0, 0, 10, 10]], [1], [0.9], low=False)
    empty = _dets(np.zeros((0, 4)), [], [], low=False)
    assert match_detections(one, empty, 0.9, 1e-4, score_floor=0.05, max_detections=100)["unmatched"] == 1
    assert match_detections(empty, one, 0.9, 1e-4, score_floor=0.05, max_detections=100)["unmatched"] == 1
    two = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.5], low=False)
    assert match_detections(two, one, 0.9, 1e-4, score_floor=0.05, max_detections=100)["unmatched"] == 1


def test_matching_allows_the_last_place_of_a_full_set():
    """With ``max_detections`` returned on both sides, the last places may hold different near-tied detections."""
    ref = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [1, 2, 1], [0.9, 0.5, 0.30004], low=False)
    cand = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [70, 70, 80, 80]], [1, 2, 1], [0.9, 0.5, 0.30001], low=False)
    assert match_detections(ref, cand, 0.9, 1e-4, score_floor=0.05, max_detections=3)["unmatched"] == 0
    assert match_detections(ref, cand, 0.9, 1e-4, score_floor=0.05, max_detections=4)["unmatched"] == 2
    short = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.5], low=False)
    assert match_detections(ref, short, 0.9, 1e-4, score_floor=0.05, max_detections=3)["unmatched"] == 1


@pytest.mark.parametrize(("name", "floor", "most"), [("solov2_r50", 0.1, 100), ("fcos", 0.05, 100),
                                                     ("ssd_resnet34", 0.05, 200), ("yolact_edge", 0.05, 100)])
def test_models_name_their_detection_cuts(name: str, floor: float, most: int) -> None:
    """Each model's postprocess thresholds and detection limit, with the default configs (mmdet's SOLOv2 test
    config: score_thr 0.1, filter_thr 0.05, max_per_img 100; mmdet FCOS 0.05 / 100; MLPerf SSD-ResNet34 0.05 / 200;
    YOLACT conf_thresh 0.05, max_num_detections 100)."""
    from omegaconf import OmegaConf

    from solo_npu.deploy.adapters import ModelAdapter
    from solo_npu.models import build_model

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / f"{name}.yaml")
    assert ModelAdapter(build_model(cfg, num_classes=80, device="meta")).detection_cut == (floor, most)
