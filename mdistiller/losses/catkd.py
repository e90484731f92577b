"""CAT-KD: Guo et al., "Class Attention Transfer Based Knowledge Distillation" (CVPR 2023).

The classifier, applied before global pooling as a bias-free 1x1 conv, turns the last feature map
``F`` (B, C, h, w) into class activation maps ``CAM = W F`` (B, K, h, w), whose global average is
the logits. The student learns to match the teacher's CAMs at a low resolution:

    loss = MSE(norm(pool_R(CAM_s)), norm(pool_R(CAM_t)))

``pool_R`` is adaptive average pooling to R x R (CAM_RESOLUTION, 2 in most configs) and ``norm``
optionally L2-normalises each map over its R*R positions (the authors' IF_NORMALIZE).
"""

import torch.nn.functional as F
from torch import Tensor


def class_activation_maps(feature: Tensor, weight: Tensor) -> Tensor:
    """``W F`` at every position: (B, C, h, w) and a (K, C) classifier weight -> (B, K, h, w)."""
    return F.conv2d(feature, weight[:, :, None, None])


def cat_loss(cam_student: Tensor, cam_teacher: Tensor, resolution: int, normalize: bool = False) -> Tensor:
    """MSE between the CAMs average-pooled to ``resolution`` x ``resolution`` (optionally L2-normalised)."""
    cam_student = F.adaptive_avg_pool2d(cam_student, resolution)
    cam_teacher = F.adaptive_avg_pool2d(cam_teacher, resolution)
    if normalize:
        cam_student = F.normalize(cam_student.flatten(2), dim=2)
        cam_teacher = F.normalize(cam_teacher.flatten(2), dim=2)
    return F.mse_loss(cam_student, cam_teacher)
