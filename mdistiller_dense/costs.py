"""What a dense distillation costs in size and compute: the parameters of the student, of the teacher
and of the method's own modules, and the inference FLOPs per image of student and teacher.

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions, matmuls, attention; the detectors'
box decoding and NMS count nothing) over one forward in eval mode on an image of the size the
models see in training: detectors a ``MODEL.MIN_SIZE`` square (their transform resizes any image
to that short side), segmenters a ``DATASET.CROP_SIZE`` square (the segmenters' probe size when
there is no crop). The classification bench (mdistiller/benchmark.py) counts training steps instead.
"""

from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from yacs.config import CfgNode as CN

from mdistiller.benchmark import CPU_ATTENTION_FLOPS
from mdistiller_dense.distillers._base import PROBE_SIZE

__all__ = ["dense_costs", "forward_flops", "inference_gflops", "parameter_count"]


def parameter_count(module: Optional[nn.Module]) -> int:
    """Number of parameters of `module` (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@torch.no_grad()
def forward_flops(model: nn.Module, inputs: Union[Tensor, Sequence[Tensor]]) -> int:
    """FLOPs of one eval-mode forward of ``model`` on ``inputs`` (a batch tensor, or a detector's
    list of images), counted by torch.utils.flop_counter (a multiply-add is 2 FLOPs)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def inference_gflops(model: nn.Module, detection: bool, size: int) -> float:
    """GFLOPs of one eval-mode forward of `model` on one (3, size, size) image."""
    image = torch.zeros(3, size, size, device=next(model.parameters()).device)
    return forward_flops(model, [image] if detection else image[None]) / 1e9


def dense_costs(distiller: nn.Module, cfg: CN) -> Dict[str, float]:
    """Parameters of student, teacher and method modules, and the GFLOPs per image of student and teacher."""
    size = cfg.MODEL.MIN_SIZE if distiller.detection else (cfg.DATASET.CROP_SIZE or PROBE_SIZE)
    teacher = distiller.teacher
    return {"student_params": parameter_count(distiller.student), "teacher_params": parameter_count(teacher),
            "method_params": distiller.get_extra_parameters(), "flops_image_size": size,
            "student_gflops": inference_gflops(distiller.student, distiller.detection, size),
            "teacher_gflops": inference_gflops(teacher, distiller.detection, size) if teacher is not None else None}
