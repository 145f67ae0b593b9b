import importlib.util
import logging
import os
import sys

import pytest
import torch
from stand_ins import torch_npu as npu_stand_in
from stand_ins.child import in_child

from solo_npu import runtime
from solo_npu.runtime import device as dev


@pytest.fixture
def no_npu(monkeypatch):
    """torch_npu absent: importing it raises ImportError."""
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    real_import = dev.importlib.import_module

    def fake_import(name, *a, **k):
        if name == "torch_npu":
            raise ImportError("No module named 'torch_npu'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(dev.importlib, "import_module", fake_import)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_npu(monkeypatch):
    """The torch_npu stand-in (tests/stand_ins/torch_npu.py) with two devices; returns what it was asked.

    Installing it names the PrivateUse1 backend "npu" for the life of the process, so every test that uses
    it runs in a child pytest process (``@in_child``, tests/stand_ins/child.py)."""
    return npu_stand_in.install(monkeypatch, device_count=2).npu.calls


def test_auto_without_npu_or_cuda_is_cpu(no_npu):
    info = runtime.resolve_device("auto")
    assert info.type == "cpu" and info.device == torch.device("cpu")
    assert runtime.dist_backend(info) == "gloo"
    assert not runtime.is_npu_available()


def test_explicit_npu_without_torch_npu_says_how_to_install(no_npu):
    with pytest.raises(runtime.DeviceError, match=r"pip install \.\[npu\]"):
        runtime.resolve_device("npu")


def test_explicit_cuda_without_cuda_fails(no_npu):
    with pytest.raises(runtime.DeviceError, match="cuda"):
        runtime.resolve_device("cuda")


def test_unknown_device_name():
    with pytest.raises(runtime.DeviceError, match="unknown device 'tpu'"):
        runtime.resolve_device("tpu")
    with pytest.raises(runtime.DeviceError, match=r"^bad device npu:x: the index after ':' is a device number"):
        runtime.resolve_device("npu:x")


def test_explicit_npu_with_a_torch_npu_that_does_not_import_says_so(no_npu, monkeypatch):
    # A broken CANN environment makes `import torch_npu` fail although the package is there.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torch_npu" else real_find_spec(name, *a))
    with pytest.raises(runtime.DeviceError, match=r"torch_npu is installed but does not import .*set_env\.sh"):
        runtime.resolve_device("npu")


def test_explicit_cuda_index_beyond_the_visible_devices_is_one_clear_error(no_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert runtime.resolve_device("cuda:0").index == 0
    message = (r"^device=cuda:1 requested but 1 cuda device is visible \(cuda:0\): "
               r"indices count the visible devices from 0 \(CUDA_VISIBLE_DEVICES=1\)$")
    with pytest.raises(runtime.DeviceError, match=message):
        runtime.resolve_device("cuda:1")


@in_child
def test_explicit_npu_index_beyond_the_visible_devices_is_one_clear_error(monkeypatch):
    # With ASCEND_RT_VISIBLE_DEVICES=4,5 on an 8-device machine the two devices are npu:0 and npu:1; torch_npu would
    # hand npu:4 to ACL, which fails with error code 107001 (the stand-in's set_device raises the same).
    npu_stand_in.install(monkeypatch, device_count=8)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    assert runtime.resolve_device("npu:1", local_rank=0).index == 1
    with pytest.raises(runtime.DeviceError, match=r"^device=npu:4 requested but 2 npu devices are visible "
                                                  r"\(npu:0 to npu:1\): indices count the visible devices from 0 "
                                                  r"\(ASCEND_RT_VISIBLE_DEVICES=4,5\)$"):
        runtime.resolve_device("npu:4")
    with pytest.raises(RuntimeError, match="error code is 107001"):
        torch.npu.set_device(4)


@in_child
def test_fake_npu_is_preferred_and_ranks_wrap(fake_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # npu still wins
    info = runtime.resolve_device("auto", local_rank=3)
    assert info.type == "npu" and info.index == 1  # 3 % 2 devices
    assert runtime.dist_backend(info) == "hccl"
    assert runtime.resolve_device("npu:0").index == 0
    assert runtime.amp_dtype(info, "fp16") == torch.float16
    assert runtime.amp_dtype(info, "bf16") == torch.bfloat16


@in_child
def test_more_ranks_on_a_node_than_visible_devices_is_one_line(fake_npu, monkeypatch):
    """Ranks beyond the visible devices would share one (HCCL refuses two ranks on a device only once its
    communicator setup times out): with 4 ranks per node and 2 NPUs visible every rank stops at once."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(runtime.DeviceError, match=r"4 ranks on this node but 2 npu devices are visible "
                                                  r"\(ASCEND_RT_VISIBLE_DEVICES=.*\): each rank needs its own device"):
        runtime.resolve_device("auto", local_rank=3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.resolve_device("npu", local_rank=1).index == 1


@in_child
def test_fake_npu_setup_applies_env_and_compile_mode(fake_npu, monkeypatch):
    for key in dev.NPU_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "1")  # set by the user: kept
    monkeypatch.delenv("MY_VAR", raising=False)
    info = runtime.resolve_device("npu")
    runtime.setup_device(info, {"npu": {"jit_compile": False, "env": {"MY_VAR": "7"}}})
    assert fake_npu["jit_compile"] is False
    assert fake_npu["set_device"] == torch.device("npu", 0)
    assert os.environ["HCCL_CONNECT_TIMEOUT"] == "1800"
    assert os.environ["TASK_QUEUE_ENABLE"] == "1"
    assert os.environ["MY_VAR"] == "7"


@in_child
@pytest.mark.parametrize("count_cache", ["lru", "after_init"])
def test_npu_env_choosing_devices_after_torch_npu_counted_them_is_one_clear_error(monkeypatch, count_cache):
    # resolve_device imports torch_npu and counts the devices before setup_device applies runtime.npu.env: an
    # ASCEND_RT_VISIBLE_DEVICES given there would change nothing (older torch_npu lru_caches device_count;
    # newer ones re-read it until the NPU is initialised, but npu:0 was chosen among all 8 already).
    npu = npu_stand_in.install(monkeypatch, device_count=8, count_cache=count_cache).npu
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES")
    info = runtime.resolve_device("npu")
    assert npu.device_count() == 8
    late = {"npu": {"env": {"ASCEND_RT_VISIBLE_DEVICES": "4,5"}}}
    with pytest.raises(runtime.DeviceError) as err:
        runtime.setup_device(info, late)
    assert str(err.value) == (
        "runtime.npu.env.ASCEND_RT_VISIBLE_DEVICES=4,5 cannot take effect: torch_npu has already counted the visible "
        "devices with ASCEND_RT_VISIBLE_DEVICES=<unset> and the run's device was chosen among them; set it in the "
        "environment before the run starts (ASCEND_RT_VISIBLE_DEVICES=4,5 python train.py ...)")
    assert "ASCEND_RT_VISIBLE_DEVICES" not in os.environ and "set_device" not in npu.calls
    if count_cache == "lru":  # what the variable would have done, set this late: nothing
        os.environ["ASCEND_RT_VISIBLE_DEVICES"] = "4,5"
        assert npu.device_count() == 8


@in_child
def test_npu_env_applied_before_torch_npu_is_imported_takes_effect(monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES")
    assert "torch_npu" not in sys.modules
    cfg = {"npu": {"env": {"ASCEND_RT_VISIBLE_DEVICES": "4,5"}}}
    assert runtime.apply_npu_env(cfg)["ASCEND_RT_VISIBLE_DEVICES"] == "4,5"
    npu = npu_stand_in.install(monkeypatch, device_count=8, count_cache="lru").npu  # the import comes after it
    info = runtime.resolve_device("npu:1")
    assert npu.device_count() == 2
    runtime.setup_device(info, cfg)  # the same value: nothing left to refuse
    assert npu.calls["set_device"] == torch.device("npu", 1)


def test_deterministic_npu_runs_ask_hccl_for_deterministic_reductions(monkeypatch):
    monkeypatch.delenv("HCCL_DETERMINISTIC", raising=False)
    for key in dev.NPU_ENV_DEFAULTS:
        monkeypatch.setenv(key, os.environ.get(key, "x"))  # restored after the test
    assert "HCCL_DETERMINISTIC" not in runtime.apply_npu_env({"deterministic": False}, device="npu")
    assert "HCCL_DETERMINISTIC" not in runtime.apply_npu_env({"deterministic": True}, device="cpu")
    assert "HCCL_DETERMINISTIC" not in os.environ
    assert runtime.apply_npu_env({"deterministic": True}, device="npu")["HCCL_DETERMINISTIC"] == "true"
    assert os.environ["HCCL_DETERMINISTIC"] == "true"
    strict = {"deterministic": True, "npu": {"env": {"HCCL_DETERMINISTIC": "strict"}}}
    assert runtime.apply_npu_env(strict, device="auto")["HCCL_DETERMINISTIC"] == "strict"
    monkeypatch.setenv("HCCL_DETERMINISTIC", "false")  # exported by the user: kept
    runtime.apply_npu_env({"deterministic": True}, device="npu")
    assert os.environ["HCCL_DETERMINISTIC"] == "false"


@in_child
def test_data_loader_pins_for_the_npu(monkeypatch, make_synthetic_cfg):
    # torch 2.1's DataLoader pins for CUDA only (dataloader.py: `loader.pin_memory and torch.cuda.is_available()`)
    # unless pin_memory_device names the device; newer ones pin for the current accelerator themselves.
    from solo_npu.data import build_dataloader
    from solo_npu.runtime.compat import dataloader_pins_for_accelerator

    if not hasattr(torch, "accelerator"):  # torch 2.1 (the floor)
        assert not dataloader_pins_for_accelerator()
    npu_stand_in.install(monkeypatch)
    assert runtime.resolve_device("npu").type == "npu"
    loader = build_dataloader(make_synthetic_cfg(), "train", batch_size=2, num_workers=0, pin_memory=True)
    assert loader.pin_memory
    if dataloader_pins_for_accelerator():
        assert loader.pin_memory_device == ""  # torch.accelerator decides, and the argument is deprecated
    else:
        assert loader.pin_memory_device == "npu"
        batches = iter(loader)  # the iterator's decision (built without loading a batch)
        assert batches._pin_memory and batches._pin_memory_device == "npu"
    unpinned = build_dataloader(make_synthetic_cfg(), "train", batch_size=2, num_workers=0, pin_memory=False)
    assert not unpinned.pin_memory and unpinned.pin_memory_device == ""


@in_child
def test_fused_sgd_only_on_npu(fake_npu):
    npu = runtime.resolve_device("npu")
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    assert runtime.sgd_class(npu, fused=True).__name__ == "NpuFusedSGD"
    assert runtime.sgd_class(npu, fused=False) is torch.optim.SGD
    assert runtime.sgd_class(cpu, fused=True) is torch.optim.SGD


def test_cpu_autocast_runs_bf16_and_scaler_is_off():
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    with runtime.autocast(cpu, enabled=True, dtype="fp16"):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == torch.bfloat16
    with runtime.autocast(cpu, enabled=False):
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype == torch.float32
    assert not runtime.make_grad_scaler(cpu, enabled=True, loss_scale=128).is_enabled()
    with pytest.raises(ValueError, match="amp.dtype"):
        runtime.amp_dtype(cpu, "fp8")
    with pytest.raises(ValueError, match="loss_scale"):
        runtime.make_grad_scaler(cpu, enabled=True, loss_scale=-1)


@pytest.mark.skipif(not runtime.has_device_generic_grad_scaler(),
                    reason="torch < 2.3 scales on CUDA/NPU only (torch.cuda.amp.GradScaler disables itself on CPU)")
def test_static_scaler_keeps_scale_and_skips_inf_steps():
    scaler = runtime.StaticGradScaler("cpu", 128.0)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    scaler.scale(p.sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 128.0
    assert torch.equal(p.detach(), torch.ones(3))  # the inf step was skipped
    opt.zero_grad()
    scaler.scale(p.sum()).backward()
    assert torch.allclose(p.grad, torch.full((3,), 128.0))  # gradients carry the scale
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 128.0
    assert torch.allclose(p.detach(), torch.full((3,), 0.5))  # unscaled step: 1 - 0.5 * 1


@pytest.mark.skipif(not runtime.has_device_generic_grad_scaler(),
                    reason="torch < 2.3 scales on CUDA/NPU only (torch.cuda.amp.GradScaler disables itself on CPU)")
def test_static_scaler_loading_a_dynamic_state_keeps_its_scale():
    dynamic = torch.amp.GradScaler("cpu", init_scale=1024.0)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    dynamic.scale(p.sum()).backward()
    dynamic.step(opt)
    dynamic.update()
    state = dynamic.state_dict()
    assert state["scale"] == 1024.0 and state["_growth_tracker"] == 1
    scaler = runtime.StaticGradScaler("cpu", 128.0)
    scaler.load_state_dict(state)
    assert scaler.get_scale() == 128.0  # before any update: the first resumed step runs at the config's scale
    assert scaler.scale(torch.tensor(3.0)).item() == 3.0 * 128


def test_seed_everything_repeats():
    runtime.seed_everything(123)
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    runtime.seed_everything(123)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_memory_stats_cpu_reports_rss():
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    stats = runtime.memory_stats(cpu)
    assert stats["allocated_mb"] > 10 and stats["peak_mb"] >= stats["allocated_mb"] * 0.5


@in_child
def test_accelerator_rng_states_round_trip_on_fake_npu(fake_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    states = runtime.accelerator_rng_states()
    assert list(states) == ["npu"] and len(states["npu"]) == 2  # one ByteTensor per device (npu/random.py)
    torch.npu.set_rng_state_all([states["npu"][1], states["npu"][0]])
    swapped = runtime.accelerator_rng_states()["npu"]
    runtime.set_accelerator_rng_states({**states, "cuda": [torch.zeros(1)]})  # no CUDA here: ignored
    restored = runtime.accelerator_rng_states()["npu"]
    assert not torch.equal(swapped[0], states["npu"][0])
    assert all(torch.equal(a, b) for a, b in zip(restored, states["npu"], strict=True))


def test_describe_machine_names_cpu_and_torch():
    text = runtime.describe_machine()
    assert f"({__import__('os').cpu_count()} cores)" in text and torch.__version__ in text


def _two_params_with_grads(grads=((3.0,), (4.0,))) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.tensor(g)
    return params


@in_child
def test_zero_grad_keeps_a_fused_optimizers_buffer_and_drops_plain_gradients(fake_npu):
    fused = npu_stand_in.NpuFusedSGD(_two_params_with_grads(), lr=0.1)
    fused.step()  # combines parameters and gradients into one buffer
    # NpuFusedOptimizerBase.zero_grad rejects set_to_none (torch_npu/optim/npu_fused_optim_base.py)
    with pytest.raises(ValueError, match="^set_to_none is not supported in fused optimizers$"):
        fused.zero_grad(set_to_none=True)
    runtime.zero_grad(fused)
    grads = [p.grad for g in fused.param_groups for p in g["params"]]
    assert all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)
    plain = torch.optim.SGD(_two_params_with_grads(), lr=0.1)
    runtime.zero_grad(plain)
    assert all(p.grad is None for p in plain.param_groups[0]["params"])


@in_child
@pytest.mark.parametrize("fused", [True, False])
def test_clip_grad_norm_measures_and_clips_with_either_optimizer(fake_npu, fused):
    cls = npu_stand_in.NpuFusedSGD if fused else torch.optim.SGD
    opt = cls(_two_params_with_grads(), lr=0.1)
    # Gradients (3) and (4): L2 norm 5. Both torch.nn.utils.clip_grad_norm_ and clip_grad_norm_fused_ scale
    # by max_norm / (norm + 1e-6) when that is below 1.
    assert runtime.clip_grad_norm(opt, None) == pytest.approx(5.0)
    assert runtime.clip_grad_norm(opt, 1.0) == pytest.approx(5.0)
    clipped = [float(p.grad) for p in opt.param_groups[0]["params"]]
    assert clipped == pytest.approx([3 / (5 + 1e-6), 4 / (5 + 1e-6)])
    assert (opt.calls["clip_grad_norm_fused_"] == 2) if fused else not hasattr(opt, "calls")


@in_child
def test_ddp_options_rule_out_bucket_views_for_fused_optimizers(fake_npu):
    npu = runtime.resolve_device("npu:1")
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    fused = npu_stand_in.NpuFusedSGD(_two_params_with_grads(), lr=0.1)
    plain = torch.optim.SGD(_two_params_with_grads(), lr=0.1)
    assert runtime.is_fused_optimizer(fused) and not runtime.is_fused_optimizer(plain)
    assert runtime.ddp_options(npu, fused) == {"device_ids": [1], "gradient_as_bucket_view": False}
    assert runtime.ddp_options(npu, plain) == {"device_ids": [1], "gradient_as_bucket_view": True}
    assert runtime.ddp_options(cpu, plain)["device_ids"] is None


@pytest.fixture
def single_process_group(tmp_path):
    import torch.distributed as dist

    from solo_npu.engine import comm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    comm.destroy_process_group()  # the launcher's teardown (DDP's all-reduces ran on gloo threads)


def _ddp_fused_steps(options: dict, steps: int = 3) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    opt = npu_stand_in.NpuFusedSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    net = torch.nn.parallel.DistributedDataParallel(model, **options)
    for _ in range(steps):
        x = torch.randn(4, 3)
        runtime.zero_grad(opt)
        net(x).square().sum().backward()
        opt.step()
        ref_opt.zero_grad()
        reference(x).square().sum().backward()
        ref_opt.step()
    return model, reference


@in_child
def test_ddp_bucket_views_detach_gradients_from_a_fused_buffer(fake_npu, single_process_group):
    # With bucket views DDP re-points every .grad at its bucket after the optimiser combined them: the real
    # fused optimiser would step on a stale buffer; the stand-in raises.
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="re-allocated after the fused optimizer combined"):
        _ddp_fused_steps({"gradient_as_bucket_view": True})
    model, reference = _ddp_fused_steps(runtime.ddp_options(cpu, npu_stand_in.NpuFusedSGD([torch.zeros(1)], lr=1)))
    # NpuFusedSGD is documented as compatible with torch.optim.SGD: same weights after the same steps.
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_torch_npu_that_exits_on_import_is_not_a_successful_run(tmp_path, monkeypatch, caplog):
    """torch_npu/__init__.py (Ascend/pytorch) prints the ImportError of libhccl.so / libascendcl.so and calls
    sys.exit() when CANN's libraries cannot be loaded: status 0. That must be a disabled NPU and, when the NPU
    was asked for, the runtime's one-line error, not the end of the process."""
    package = tmp_path / "torch_npu"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import sys, traceback\n"
        "try:\n"
        "    raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')\n"
        "except ImportError:\n"
        "    traceback.print_exc()\n"
        "    sys.exit()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    from solo_npu.runtime.device import import_torch_npu

    with caplog.at_level(logging.WARNING):
        assert import_torch_npu() is None
    assert "could not load a CANN library" in caplog.text and "torch_npu" not in sys.modules
    with pytest.raises(runtime.DeviceError, match=r"torch_npu is installed but does not import"):
        runtime.resolve_device("npu")


@in_child
def test_a_run_applies_npu_env_before_torch_npu_counts_the_devices(monkeypatch, tmp_path):
    """``runtime.npu.env.ASCEND_RT_VISIBLE_DEVICES`` of a run takes effect: the worker applies it before its
    first ``import torch_npu`` (here a stand-in imported on demand, as the real package is), so the run sees the
    two devices it names. Before, setup_device applied it after torch_npu had counted all eight."""
    import importlib.abc

    from solo_npu.engine.launch import launch

    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES")
    assert "torch_npu" not in sys.modules

    class OnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            return importlib.util.spec_from_loader(name, self) if name == "torch_npu" else None

        def create_module(self, spec):
            return npu_stand_in.install(None, device_count=8, count_cache="lru")

        def exec_module(self, module):
            pass

    monkeypatch.setattr(sys, "meta_path", [OnImport(), *sys.meta_path])
    cfg = {"runtime": {"device": "npu", "npu": {"env": {"ASCEND_RT_VISIBLE_DEVICES": "4,5"}}}, "launcher": {}}
    info, count = launch(lambda cfg, run_dir, info: (info, torch.npu.device_count()), cfg, tmp_path)
    assert (info.type, count, os.environ["ASCEND_RT_VISIBLE_DEVICES"]) == ("npu", 2, "4,5")


@in_child
def test_rng_states_of_more_devices_than_visible_restore_the_first(monkeypatch, caplog):
    """A run saved on 8 devices resumed where 2 are visible (the survivors of a card failure): the first two states
    are restored with a WARNING; set_rng_state_all would index past the visible devices (IndexError)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    npu = npu_stand_in.install(monkeypatch, device_count=2).npu
    saved = [torch.Generator().manual_seed(k).get_state() for k in range(8)]
    with pytest.raises(IndexError):
        npu.set_rng_state_all(saved)
    with caplog.at_level(logging.WARNING, logger="solo_npu.runtime.device"):
        runtime.set_accelerator_rng_states({"npu": saved})
    now = runtime.accelerator_rng_states()["npu"]
    assert len(now) == 2 and all(torch.equal(a, b) for a, b in zip(now, saved[:2]))
    assert "holds 8 npu RNG states and 2 devices are visible: the first 2 restored" in caplog.text
