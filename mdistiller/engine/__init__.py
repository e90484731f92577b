"""Config, trainer, checkpoints and loggers."""

from mdistiller.engine.trainer import Trainer, trainer_dict
from mdistiller.engine.dot import DistillationOrientedTrainer, DOTTrainer  # noqa: E402  (registers "dot")

__all__ = ["DOTTrainer", "DistillationOrientedTrainer", "Trainer", "trainer_dict"]
