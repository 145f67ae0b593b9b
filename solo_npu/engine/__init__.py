"""Training engine: a small loop plus hooks talking through one event storage, writers, launcher, optimiser
and schedule, checkpoints, evaluation."""

from solo_npu.engine.checkpointer import restore_training_state, training_state
from solo_npu.engine.evaluate import evaluate
from solo_npu.engine.events import EventStorage
from solo_npu.engine.hooks import CheckpointHook, CountsHook, EvalHook, LoggingHook, LRHook, ThroughputHook
from solo_npu.engine.launch import launch, torchrun_env
from solo_npu.engine.optim import WarmupStepSchedule, build_optimizer, scaled_lr
from solo_npu.engine.trainer import HookBase, NonFiniteLossError, Trainer

__all__ = [
    "CheckpointHook",
    "CountsHook",
    "EvalHook",
    "EventStorage",
    "HookBase",
    "LRHook",
    "LoggingHook",
    "NonFiniteLossError",
    "ThroughputHook",
    "Trainer",
    "WarmupStepSchedule",
    "build_optimizer",
    "evaluate",
    "launch",
    "restore_training_state",
    "scaled_lr",
    "torchrun_env",
    "training_state",
]
