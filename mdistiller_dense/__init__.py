"""mdistiller_dense: the feature distillers of mdistiller on torchvision detectors and segmenters.

The math comes from :mod:`mdistiller.losses` and :mod:`mdistiller.frequency`; this package holds the
wiring only: models (:mod:`.models`), feature capture (:mod:`.hooks`), data (:mod:`.data`),
evaluation (:mod:`.evaluation`), distillers (:mod:`.distillers`) and the trainer (:mod:`.trainer`),
run by tools/train_dense.py and tools/eval_dense.py.
"""

from mdistiller_dense.distillers import dense_distiller_dict
from mdistiller_dense.trainer import DenseTrainer
from mdistiller_dense.prompt_learning import DensePromptStage  # registers the "DENSE_PROMPTS" stage
from mdistiller_dense.sam import stages as _sam_stages  # noqa: F401  registers "SAM_PROMPTS", "SAM_ENCODER"
from mdistiller_dense.sam import trainer as _sam_trainer  # noqa: F401  registers SOLVER.TRAINER "sam"

__all__ = ["dense_distiller_dict", "DensePromptStage", "DenseTrainer"]
