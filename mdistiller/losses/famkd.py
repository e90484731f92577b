"""FAM-KD's feature loss (Pham et al., "Frequency Attention for Knowledge Distillation", WACV 2024)."""

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor


def famkd_loss(features_student: Sequence[Tensor], features_teacher: Sequence[Tensor]) -> Tensor:
    """``sum_i MSE(s_i, t_i)``: the mean squared error of each level, summed over the levels."""
    losses = [F.mse_loss(fs, ft) for fs, ft in zip(features_student, features_teacher)]
    return sum(losses[1:], losses[0])
