"""Training: config, trainer, the stages of a run, checkpoints and loggers."""

from mdistiller.engine.trainer import Trainer, trainer_dict
from mdistiller.engine.dot import DistillationOrientedTrainer, DOTTrainer  # noqa: E402  (registers "dot")
from mdistiller.engine.prompt_learning import PromptStage  # noqa: E402  (registers the "PROMPTS" stage)
from mdistiller.engine.stages import Stage, stage_dict

__all__ = ["DOTTrainer", "DistillationOrientedTrainer", "PromptStage", "Stage", "Trainer", "stage_dict", "trainer_dict"]
