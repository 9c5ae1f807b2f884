"""Training: one seeded trainer, typed recipes, safe checkpoints reused by content hash."""

from oodlab.training.checkpoint import load_checkpoint, save_checkpoint
from oodlab.training.trainer import TrainConfig, build_model, fit_or_load, train

__all__ = ["TrainConfig", "build_model", "fit_or_load", "load_checkpoint", "save_checkpoint", "train"]
