"""Config, trainer, checkpoints and loggers."""

from mdistiller.engine.trainer import Trainer, trainer_dict

__all__ = ["Trainer", "trainer_dict"]
