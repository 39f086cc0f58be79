"""The accelerate training loop shared by every method: config, optimiser, checkpoints, resume, logging."""

from diffalign.training.config import TrainConfig
from diffalign.training.loop import NonFiniteLossError, build_method, train

__all__ = ["NonFiniteLossError", "TrainConfig", "build_method", "train"]
