"""Process launching: one worker per device on this node, or join a torchrun-launched group.

``launch`` runs a job function in every worker with an initialised process group (env:// rendezvous
through ``torch.multiprocessing`` spawn), or in the current process when there is a single worker.
Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK set) it does not launch again: the current process
is one of the workers.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from solo_npu.engine import comm
from solo_npu.runtime import DeviceError, DeviceInfo, apply_npu_env, dist_backend, resolve_device, setup_device

logger = logging.getLogger(__name__)

JobFn = Callable[[dict[str, Any], Path, DeviceInfo], Any]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def torchrun_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The worker's place when started by torchrun (or any launcher setting RANK/WORLD_SIZE/LOCAL_RANK)."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    return DistEnv(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]),
                   env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_device_per_rank(device: str, local_world_size: int) -> None:
    """An explicit accelerator index (``npu:3``, ``cuda:1``) names one device; several ranks on a node need one each.

    Raises:
        DeviceError: an explicit NPU or CUDA index with more than one rank on this node.
    """
    kind, _, index = str(device or "auto").lower().partition(":")
    if index and kind in ("npu", "cuda") and local_world_size > 1:
        visible = "ASCEND_RT_VISIBLE_DEVICES" if kind == "npu" else "CUDA_VISIBLE_DEVICES"
        raise DeviceError(f"runtime.device={kind}:{index} names one device but {local_world_size} ranks run on this "
                          f"node: use runtime.device={kind} (local rank r takes device r) and {visible} to choose "
                          "the devices")


def check_launcher_env(environ: Mapping[str, str] | None = None) -> None:
    """Part of a launcher's environment is no launcher: with RANK / WORLD_SIZE / LOCAL_RANK only partly set, train.py
    would start its own workers and each process so started would train alone. WORLD_SIZE above 1 among them is a
    one-line ConfigValueError naming what is missing (torchrun sets all three); otherwise a WARNING says they are
    ignored."""
    from solo_npu.config.values import ConfigValueError

    env = os.environ if environ is None else environ
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    present = [k for k in names if k in env]
    if not present or len(present) == len(names):
        return
    missing = [k for k in names if k not in env]
    given = ", ".join(f"{k}={env[k]}" for k in present)
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 2  # not a number: no launcher set it
    if world > 1:
        raise ConfigValueError(f"the environment sets {given} but not {', '.join(missing)}: start the workers with "
                               "torchrun (it sets all three), or unset them to let train.py start its own workers")
    logger.warning("the environment sets %s but not %s: ignored (not started by torchrun); train.py starts its "
                   "own workers", given, ", ".join(missing))


def check_multinode(cfg: Mapping[str, Any]) -> None:
    """Raise a one-line ConfigValueError for a multi-node run that train.py spawns (not torchrun, which sets the
    rendezvous itself) without a rendezvous every node can reach: ``launcher.master_port`` 0 (each node would pick
    its own free port) or ``launcher.master_addr`` a loopback address (each node would wait for its own address
    until ``launcher.timeout_min`` ran out)."""
    import ipaddress

    from solo_npu.config.values import ConfigValueError

    launcher = cfg.get("launcher") or {}
    if torchrun_env() is not None or int(launcher.get("nnodes", 1)) <= 1:
        return
    if not int(launcher.get("master_port", 0) or 0):
        raise ConfigValueError("launcher.nnodes > 1 needs a fixed launcher.master_port shared by all nodes")
    addr = str(launcher.get("master_addr", "127.0.0.1"))
    try:
        loopback = addr == "localhost" or ipaddress.ip_address(addr).is_loopback
    except ValueError:  # a host name: every node resolves it
        loopback = False
    if loopback:
        raise ConfigValueError(f"launcher.nnodes > 1 needs launcher.master_addr set to node 0's address, which "
                               f"every node can reach (it is {addr}, each node's own)")


def drop_own_run_dir(run_dir: Path, shared_dir: Path) -> None:
    """Remove this rank's own run directory when it is empty and not the run's (rank 0's) directory.

    Under torchrun every rank composes the config; the ranks of one node that composed it in the same second
    share one such directory and remove it at the same moment, so it may be gone already, and ``rmdir``
    leaves a directory that is not empty.
    """
    if shared_dir != run_dir:
        with contextlib.suppress(OSError):  # FileNotFoundError: another rank removed it; not empty: it stays
            run_dir.rmdir()


def _run_worker(job: JobFn, cfg: dict[str, Any], run_dir: Path, env: DistEnv, timeout_min: int) -> Any:
    """Initialise the device and the process group, run ``job``, tear the group down."""
    runtime = cfg.get("runtime") or {}
    check_device_per_rank(str(runtime.get("device", "auto")), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    # before torch_npu is imported and counts the devices ASCEND_RT_VISIBLE_DEVICES shows
    apply_npu_env(runtime, device=str(runtime.get("device", "auto")))
    info = resolve_device(str(runtime.get("device", "auto")), env.local_rank)
    setup_device(info, runtime)
    if env.world_size == 1:
        return job(cfg, run_dir, info)
    os.environ.update({"MASTER_ADDR": env.master_addr, "MASTER_PORT": str(env.master_port),
                       "RANK": str(env.rank), "LOCAL_RANK": str(env.local_rank),
                       "WORLD_SIZE": str(env.world_size)})
    dist.init_process_group(dist_backend(info), init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(minutes=timeout_min))
    try:
        shared_dir = Path(comm.broadcast_object(str(run_dir)))
        drop_own_run_dir(run_dir, shared_dir)
        result = job(cfg, shared_dir, info)
        dist.barrier()  # nobody tears the group down while a peer still talks to it
        return result
    finally:
        comm.destroy_process_group()


def worker_threads(nproc: int) -> int | None:
    """CPU threads for each of ``nproc`` spawned workers: this node's share of the parent's (a worker is a fresh
    interpreter, which would otherwise take every core, ``nproc`` times over), or ``None`` when OMP_NUM_THREADS
    is set: the workers inherit it and it holds per process, as under torchrun (which sets it to 1 for more than
    one process per node unless it is set)."""
    if os.environ.get("OMP_NUM_THREADS"):
        logger.info("each of the %d workers uses OMP_NUM_THREADS=%s CPU threads", nproc, os.environ["OMP_NUM_THREADS"])
        return None
    threads = max(1, torch.get_num_threads() // nproc)
    logger.info("each of the %d workers uses %d CPU threads (the node's %d shared; OMP_NUM_THREADS sets it)", nproc,
                threads, torch.get_num_threads())
    return threads


def _spawned(local_rank: int, job: JobFn, cfg: dict[str, Any], run_dir: Path, node_rank: int, nproc: int,
             world_size: int, master_addr: str, master_port: int, timeout_min: int, pipes: list[Any],
             sigint_ignored: bool = False, threads: int | None = None) -> None:
    env = DistEnv(node_rank * nproc + local_rank, local_rank, world_size, master_addr, master_port)
    os.environ["LOCAL_WORLD_SIZE"] = str(nproc)
    if threads:
        torch.set_num_threads(threads)
    try:
        _report_signals(pipes[local_rank], sigint_ignored)
        _run_worker(job, cfg, run_dir, env, timeout_min)
    except KeyboardInterrupt as exc:  # SIGINT / SIGTERM: every rank stopped after the same step
        # Global rank 0 saved the state before its exception left the trainer; the exit status of each node's
        # local rank 0 tells that node's parent how the run stopped. The others leave with 0: a non-zero
        # status would make torch.multiprocessing end the node's remaining ranks at once, global rank 0
        # perhaps while it is still saving.
        _leave_worker(_STOP_STATUS[_stop_kind(exc)] if env.local_rank == 0 else 0)
    _leave_worker()


_SIGNAL_PIPE: Any = None  # this worker's pipe to its parent (_report_signals), kept open for the C signal handler
_PARENT_PID = 0  # the process that started this worker
# What a worker reports on its pipe besides the numbers of the signals it gets (1 to 64): its training loop took
# the signals over, gave them back, or the run's training ended (solo_npu.engine.interrupts.phase_listener).
_IN_LOOP, _OUT_OF_LOOP, _FINAL = 0xFF, 0xFE, 0xFD
_PHASE_BYTES = {"loop": _IN_LOOP, "out": _OUT_OF_LOOP, "final": _FINAL}


def _report_signals(pipe: tuple[Any, Any], sigint_ignored: bool = False) -> None:
    """Tell the parent (:class:`_Relay`) which signals this worker gets and where it is: in its training loop,
    out of it, or after training; outside the loop leave SIGINT to the parent (:func:`_outside_loop`).

    Python's C-level signal handler writes the number of each signal to the ``signal.set_wakeup_fd`` descriptor
    the moment it arrives, before the Python handler runs. Both ends of the pipe stay open here, so the handler
    never writes into a pipe without a reader (the parent may be gone: torch.multiprocessing's parent-death
    signal is a SIGINT), and a full pipe drops the byte without a warning. The worker was started with SIGINT
    ignored (:func:`_start_workers`), so a Ctrl-C while it imported did nothing here; ``sigint_ignored``: the
    parent had it ignored too (started in the background), and it stays so.
    """
    from solo_npu.engine import interrupts

    global _SIGNAL_PIPE, _PARENT_PID
    _SIGNAL_PIPE, _PARENT_PID = pipe, os.getppid()
    fd = pipe[1].fileno()
    os.set_blocking(fd, False)

    def report(phase: str) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, bytes([_PHASE_BYTES[phase]]))

    interrupts.phase_listener = report
    interrupts.outside_loop_handler = _outside_loop
    interrupts.announce = False  # the parent says it once for the run
    if threading.current_thread() is not threading.main_thread():
        return  # the parent then sees no signal of this worker
    signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    if not sigint_ignored:
        interrupts.set_sigint(_outside_loop)


def _outside_loop(signum: int, frame: Any) -> None:
    """A spawned worker's SIGINT outside its training loop does nothing here: raised, it would stop this worker
    wherever it is (importing, in the rendezvous, setting up, in the final evaluation) and leave the others
    waiting for it in a collective. The parent, which a terminal's Ctrl-C reaches too and this worker's report
    of it otherwise (:class:`_Relay`), decides for the run. A worker whose parent is gone stops on its own
    (torch.multiprocessing's parent-death signal is a SIGINT)."""
    if os.getppid() != _PARENT_PID:
        raise KeyboardInterrupt("SIGINT received")


def _leave_worker(status: int = 0) -> NoReturn:
    """End a spawned worker whose job succeeded, without tearing the interpreter down.

    gloo's run-loop threads drop their last reference to a finished collective after the waiting rank has
    moved on. A collective issued during backward (DDP's all-reduces) carries autograd's thread-local state,
    which owns a Python object (the contextvars context ``torch.autograd`` stashes there), and so does a
    barrier queued behind it. If that last reference goes while the interpreter is finalizing, the thread
    cannot take the GIL, Python ends it inside a C++ destructor, and the rank aborts with "terminate called
    without an active exception" after its job had succeeded. The worker has nothing left to do: join its
    non-daemon threads, run the exit handlers (logging, multiprocessing finalizers), flush, exit with
    ``status`` (0; a stopped run's code on global rank 0, see :func:`launch`; train.py's own status under
    torchrun, see :func:`exit_process`). A spawned worker's failing job never gets here; its exception reaches
    torch.multiprocessing as before. A Ctrl-C from here on has nothing left to stop
    and is ignored: its KeyboardInterrupt would cut the exit handlers short and end the worker with status 0.
    """
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(status)


def exit_process(code: object = None) -> NoReturn:
    """End train.py with ``code`` as ``sys.exit(code)`` would; a torchrun worker of a multi-rank run leaves
    without tearing the interpreter down, as a spawned worker does (:func:`_leave_worker`).

    Under torchrun the worker is train.py's own process, and its gloo threads can outlive the job exactly as a
    spawned worker's do: a rank whose training had finished and saved then aborted in interpreter finalization
    ("terminate called without an active exception", exit status -6), and torchrun reported the run failed.
    A string ``code`` (the ``[Error] ...`` lines) is printed to stderr and ends with status 1, as Python does.
    """
    env = torchrun_env()
    if env is None or env.world_size == 1:
        sys.exit(code)
    if code is None or isinstance(code, int):
        status = int(code or 0)
    else:
        with contextlib.suppress(OSError):
            print(code, file=sys.stderr, flush=True)
        status = 1
    _leave_worker(status)


def launch(job: JobFn, cfg: dict[str, Any], run_dir: str | Path) -> Any:
    """Run ``job(cfg, run_dir, device_info)`` on every worker of the run.

    Args:
        job: a module-level function (it is pickled for the spawned workers).
        cfg: the resolved config as a plain dict (``launcher`` and ``runtime`` sections are read here).
        run_dir: the run directory (created by the caller; shared by all ranks).
    """
    run_dir = Path(run_dir)
    launcher = cfg.get("launcher") or {}
    timeout_min = int(launcher.get("timeout_min", 30))
    env = torchrun_env()
    if env is not None:
        logger.info("started by torchrun: rank %d of %d", env.rank, env.world_size)
        return _run_worker(job, cfg, run_dir, env, timeout_min)
    nproc, nnodes = int(launcher.get("nproc_per_node", 1)), int(launcher.get("nnodes", 1))
    node_rank = int(launcher.get("node_rank", 0))
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"bad launcher settings: nproc_per_node={nproc}, nnodes={nnodes}, node_rank={node_rank}")
    world_size = nproc * nnodes
    check_device_per_rank(str((cfg.get("runtime") or {}).get("device", "auto")), nproc)
    if world_size == 1:
        return _run_worker(job, cfg, run_dir, DistEnv(0, 0, 1, "127.0.0.1", 0), timeout_min)
    check_multinode(cfg)
    port = int(launcher.get("master_port", 0) or 0) or free_port()
    addr = str(launcher.get("master_addr", "127.0.0.1"))
    logger.info("launching %d workers on node %d/%d (world size %d, master %s:%d)", nproc, node_rank, nnodes,
                world_size, addr, port)
    threads = worker_threads(nproc)
    pipes = [mp.get_context("spawn").Pipe(duplex=False) for _ in range(nproc)]
    sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    _join_relaying_signals(lambda: mp.start_processes(
        _spawned, args=(job, cfg, run_dir, node_rank, nproc, world_size, addr, port, timeout_min, pipes,
                        sigint_ignored, threads), nprocs=nproc, join=False, start_method="spawn"), pipes)
    return None


# How a spawned global rank 0 tells its parent that the run stopped on a signal (solo_npu.engine.interrupts).
_STOP_STATUS = {"sigint": 130, "sigterm": 143, "mid_step": 131}


def _stop_kind(exc: KeyboardInterrupt) -> str:
    from solo_npu.engine.interrupts import InterruptedMidStep, Terminated

    if isinstance(exc, InterruptedMidStep):
        return "mid_step"
    return "sigterm" if isinstance(exc, Terminated) else "sigint"


def _known_error(child_traceback: str) -> Exception | None:
    """The one-line error a worker raised (DeviceError, CheckpointError, AnnotationFileError, NonFiniteLossError),
    rebuilt from the traceback that torch.multiprocessing hands the parent, so that train.py reports it as a
    one-process run does."""
    from solo_npu.checkpoints import CheckpointError
    from solo_npu.data import AnnotationFileError
    from solo_npu.data.coco import ImagesNotFoundError
    from solo_npu.engine.trainer import NonFiniteLossError

    lines = child_traceback.strip().splitlines()
    name, sep, message = (lines[-1] if lines else "").partition(": ")
    known = (DeviceError, CheckpointError, AnnotationFileError, ImagesNotFoundError, NonFiniteLossError)
    cls = {c.__name__: c for c in known}.get(name.rsplit(".", 1)[-1])
    return cls(message) if sep and cls is not None else None


# Once one worker has ended, the others have this long to end too before they are killed: a rank that waits in
# a collective for a peer that is gone never returns to Python (on NCCL / HCCL until the process group's
# timeout, 30 minutes by default), and its stop request waits for an all-reduce that cannot complete.
WORKER_EXIT_GRACE_S = 120.0


def _wait_bounded(context: Any, grace_s: float | None = None, relay: _Relay | None = None) -> None:
    """Wait until every worker has ended; kill those still running ``grace_s`` after the first one ended.
    A worker that failed gets the others SIGTERM at once (as torch.multiprocessing does), and its failure is
    the one ``context.join()`` reports afterwards (not the kill of a peer). Meanwhile ``relay`` reads what the
    workers report of their signals as it comes."""
    from multiprocessing.connection import wait

    grace = WORKER_EXIT_GRACE_S if grace_s is None else grace_s
    processes, stops = context.processes, (0, *_STOP_STATUS.values())
    deadline, first_failed = None, None
    while True:
        alive = [p for p in processes if p.is_alive()]
        ended = [i for i, p in enumerate(processes) if p.exitcode is not None]
        if ended and deadline is None:
            deadline = time.monotonic() + grace
        failed = [i for i in ended if processes[i].exitcode not in stops]
        if failed and first_failed is None:
            first_failed = failed[0]
            for p in alive:
                p.terminate()
        if not alive:
            break
        if deadline is not None and time.monotonic() >= deadline:
            for p in alive:
                logger.warning("worker %d did not end %.0f s after another one; killing it", p.pid, grace)
                p.kill()
                p.join(timeout=5)
            break
        wait([p.sentinel for p in alive] + (relay.readers if relay is not None else []), timeout=1.0)
        if relay is not None:
            relay.drain()
            if relay.reported:  # a worker outside its loop got a SIGINT of its own: the run's Ctrl-C
                relay.handle(signal.SIGINT, None)
    if first_failed is not None:  # join() reports the first ended sentinel it finds failed: put that one first
        order = sorted(context.sentinels.items(), key=lambda item: item[1] != first_failed)
        context.sentinels = dict(order)


# How long the spawn parent waits for its workers to report a SIGINT of their own before it passes one on
OWN_SIGINT_WAIT_S = 0.05


class _Relay:
    """The spawn parent's SIGINT / SIGTERM handler: passes the signal on to the workers, or ends them.

    A terminal's Ctrl-C reaches every process of the foreground group, the workers included, and so does
    ``timeout -s INT`` (GNU coreutils src/timeout.c signals the command, then its process group); ``kill -INT`` of
    the parent (job schedulers, IDEs, ``timeout --foreground -s INT``) reaches the parent alone. What a signal does
    depends on where the workers are; each reports the signals it gets the moment they arrive and where it is
    (:func:`_report_signals`), and these reports are read here before anything is sent.

    - All in their training loop: a worker must get one SIGINT per Ctrl-C. Two further apart than the trainer
      merges (``SAME_CTRL_C_S``, timed when the Python handler runs, which may be long after the arrival) are
      "Ctrl-C twice", a stop without saving, and one that arrives after the worker raised its stop interrupts the
      stop itself: passed on as well, a terminal's second Ctrl-C ended most runs as a plain Ctrl-C. So a SIGINT
      is passed on only to the workers that did not get one of their own within ``SAME_CTRL_C_S``. A worker that
      left its loop on a stop (saving last.pth) gets SIGTERM instead: the stop is interrupted, as Ctrl-C twice does.
      The line that says what happens is written here once, not by every rank.
    - One still starting (importing, in the rendezvous, setting up, evaluating in ``mode=eval``): no step can be
      taken, and a worker stopped wherever it is leaves the others waiting for it in the rendezvous or a collective
      (gloo ends that wait with "Connection closed by peer" and a traceback; NCCL and HCCL wait until the workers
      are killed, :data:`WORKER_EXIT_GRACE_S`). Every worker ends at once: SIGTERM, or
      SIGKILL for one already in its loop, whose handler would take SIGTERM for a stop request and wait for a
      step that its peers will not take (it has nothing to save: no step was taken since it started). The run is
      reported as stopped by Ctrl-C, whatever the workers' ends look like.
    - After training (the final evaluation, last.pth, summary.json; solo_npu.engine.interrupts.FinalPhase): the
      first SIGINT is held, with a line saying so, and the run ends normally; the next one ends every worker at
      once (summary.json, written when training ended, says the final evaluation was interrupted).

    SIGTERM is passed on as it is, except to workers still starting, which end at once as for SIGINT. A worker's
    own SIGINT outside its loop (``kill -INT`` of the worker) counts as the run's.
    """

    def __init__(self, pipes: list[tuple[Any, Any]]) -> None:
        self.readers = [reader for reader, _ in pipes]
        for reader in self.readers:
            os.set_blocking(reader.fileno(), False)
        self.context: Any = None
        self.received: set[int] = set()
        self.early: list[int] = []  # what arrived while the workers were being started
        self.phase = ["start"] * len(pipes)  # "start", "loop", "out" or "final" (_PHASE_BYTES)
        self.sigint_at = -math.inf  # this process's last SIGINT
        self.own_sigint_at = [-math.inf] * len(pipes)  # each worker's, as it reported
        self.reported = False  # a worker outside its loop reported a SIGINT of its own
        self.held = False  # a Ctrl-C after training waits for the run's end
        self.announced = False  # the line for a stop in the loop was written
        self.ended = False  # this process ended the workers at once

    def handle(self, signum: int, frame: Any) -> None:
        from solo_npu.engine.interrupts import SAME_CTRL_C_S

        self.received.add(signum)
        if signum == signal.SIGINT:
            now = time.monotonic()
            if now - self.sigint_at < SAME_CTRL_C_S:
                return  # the same Ctrl-C delivered twice (``timeout -s INT`` signals this process and its group)
            self.sigint_at = now
        if self.context is None:
            self.early.append(signum)
            return
        self.drain()
        if signum == signal.SIGINT:
            self._await_own_sigints()
            self.reported = False  # this Ctrl-C's
        self._decide(signum)

    def _decide(self, signum: int) -> None:
        from solo_npu.engine.interrupts import FINAL_PHASE_NOTICE, say, stop_notice

        alive = [(i, p) for i, p in enumerate(self.context.processes) if p.is_alive()]
        phases = {self.phase[i] for i, _ in alive}
        if "start" in phases:
            self._end_now(alive)
        elif "final" in phases and signum == signal.SIGINT:
            if self.held:
                self._end_now(alive)
            else:
                self.held = True
                say(FINAL_PHASE_NOTICE)
        else:
            if "loop" in phases and not self.announced:
                self.announced = True
                say(stop_notice(signum, distributed=True))
            for index, process in alive:
                self._send(index, process.pid, signum)

    def _end_now(self, alive: list[tuple[int, Any]]) -> None:
        self.ended = True
        for index, process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL if self.phase[index] == "loop" else signal.SIGTERM)

    def _await_own_sigints(self) -> None:
        """Give the workers that a terminal's Ctrl-C reached too the time to report it (:data:`OWN_SIGINT_WAIT_S`).
        A worker is woken by the signal at the same moment as this process, often on another core: read at once,
        its report may come a few microseconds after the reading and the SIGINT passed on after it would be its
        second (seen on a 2-core machine). A worker not yet scheduled after the wait still holds the
        terminal's SIGINT pending, and the kernel merges the one passed on into it."""
        from solo_npu.engine.interrupts import SAME_CTRL_C_S

        deadline = time.monotonic() + OWN_SIGINT_WAIT_S
        while True:
            now = time.monotonic()
            alive = [i for i, p in enumerate(self.context.processes) if p.is_alive()]
            if now >= deadline or all(now - self.own_sigint_at[i] < SAME_CTRL_C_S for i in alive):
                return
            time.sleep(0.005)
            self.drain()

    def started(self, context: Any) -> None:
        """The workers exist: act on what arrived while they were being started."""
        self.context = context
        early, self.early = self.early, []
        for signum in early:
            self._decide(signum)

    def drain(self) -> None:
        """Read the workers' reports (:func:`_report_signals`)."""
        now = time.monotonic()
        phases = {code: phase for phase, code in _PHASE_BYTES.items()}
        for index, reader in enumerate(self.readers):
            data = b""
            with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
                while chunk := os.read(reader.fileno(), 4096):
                    data += chunk
            for byte in data:
                if byte == signal.SIGINT:
                    self.own_sigint_at[index] = now
                    self.reported |= self.phase[index] != "loop"
                elif byte in phases:
                    self.phase[index] = phases[byte]

    def _send(self, index: int, pid: int, signum: int) -> None:
        from solo_npu.engine.interrupts import SAME_CTRL_C_S

        if signum == signal.SIGINT:
            if time.monotonic() - self.own_sigint_at[index] < SAME_CTRL_C_S:
                return  # the same Ctrl-C reached the worker directly
            if self.phase[index] != "loop":
                signum = signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _join_relaying_signals(start: Callable[[], Any], pipes: list[tuple[Any, Any]]) -> None:
    """Start the spawned workers (``start`` returns torch.multiprocessing's context) and wait for them. SIGINT
    and SIGTERM to this process are passed on to them, or end them (:class:`_Relay`: in the training loop each
    stops after its step and rank 0 saves; ``torch.multiprocessing`` already sends them SIGINT if this process
    dies); this process does not stop on its own, it waits for the workers. A SIGINT this process inherited
    ignored (started in the background) stays ignored, as it is in the workers. A run that rank 0 reports as
    stopped, or that this process ended, ends here as the exception of its stop, for ``train.py`` to report."""
    from solo_npu.engine.interrupts import InterruptedMidStep, Terminated

    relay = _Relay(pipes)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, relay.handle)}
        if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, relay.handle)
    stops = {"sigint": KeyboardInterrupt("SIGINT received"), "sigterm": Terminated("SIGTERM received"),
             "mid_step": InterruptedMidStep("SIGINT received twice inside a step")}
    try:
        context = _start_workers(start, relay, signal.SIGINT in previous)
        _wait_bounded(context, relay=relay)
        while not context.join():
            pass
    except mp.ProcessRaisedException as exc:
        if relay.ended:  # a worker that failed after this process ended the others (its peer gone, say)
            raise stops["sigterm" if signal.SIGTERM in relay.received else "sigint"] from None
        known = _known_error(str(exc))
        if known is None:
            raise
        raise known from None
    except mp.ProcessExitedException as exc:
        kinds = {code: kind for kind, code in _STOP_STATUS.items()}
        kind = kinds.get(exc.exit_code) if exc.error_index == 0 else None
        if kind is None and (relay.ended or (exc.exit_code in (-signal.SIGTERM, -signal.SIGINT) and relay.received)):
            # Ended by this process (SIGTERM, SIGKILL), or outside the training loop by SIGTERM passed on, or by
            # SIGINT once its parent was gone (Python ends with SIGINT on a KeyboardInterrupt it does not catch).
            kind = "sigterm" if signal.SIGTERM in relay.received else "sigint"
        if kind is None:
            raise
        raise stops[kind] from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for connection in (c for pipe in pipes for c in pipe):
            connection.close()


def _start_workers(start: Callable[[], Any], relay: _Relay, take_sigint: bool) -> Any:
    """Start the workers (``start`` returns torch.multiprocessing's context), with SIGINT ignored where this
    process takes it (``take_sigint``). A worker takes it over once it can report it (:func:`_report_signals`),
    so a Ctrl-C while it still imports is no KeyboardInterrupt traceback from the middle of its imports.

    SIG_IGN is the one disposition that exec keeps (a handler is reset to the default), so it is set for the
    moment multiprocessing's spawn start method forks and execs each worker (``multiprocessing.util.spawnv_passfds``,
    called by ``multiprocessing.popen_spawn_posix``), and this process's handler is back right after: a SIGINT
    meanwhile reaches ``relay``, which acts on it once the workers exist. (Ignoring it for the whole start, blocked
    so that it stays pending, lost it: multiprocessing's resource tracker, started with the first worker, unblocks
    SIGINT after its own start, multiprocessing/resource_tracker.py ``ensure_running``.)"""
    if not take_sigint:
        context = start()
    else:
        import multiprocessing.util as mp_util

        spawnv_passfds = mp_util.spawnv_passfds

        def spawnv_passfds_ignoring_sigint(*args: Any, **kwargs: Any) -> Any:
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                return spawnv_passfds(*args, **kwargs)
            finally:
                signal.signal(signal.SIGINT, handler)

        mp_util.spawnv_passfds = spawnv_passfds_ignoring_sigint
        try:
            context = start()
        finally:
            mp_util.spawnv_passfds = spawnv_passfds
    relay.started(context)
    return context
