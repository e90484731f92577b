"""Parameters and FLOPs of dense runs (mdistiller_dense/costs.py): counts against hand computations."""

import pytest
from torch import nn

from dense_helpers import dense_cfg, save_teacher
from mdistiller_dense.costs import dense_costs, inference_gflops, parameter_count


def test_the_flops_of_a_convolution_are_counted_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 2 (multiply-add) x output positions (8 x 16 x 16) x kernel (3 x 3 x 3)
    assert inference_gflops(conv, detection=False, size=16) * 1e9 == 2 * 8 * 16 * 16 * 27
    assert parameter_count(conv) == 8 * 3 * 9 + 8 and parameter_count(None) == 0


@pytest.mark.slow
def test_a_dense_distiller_reports_student_teacher_and_method_sizes(tmp_path):
    from mdistiller_dense.build import build_dense_distiller

    cfg = dense_cfg(tmp_path, "CWD", student="fcos_resnet18_fpn", teacher="fcos_resnet18_fpn")
    save_teacher(cfg)
    distiller = build_dense_distiller(cfg, 4)
    costs = dense_costs(distiller, cfg)
    assert costs["student_params"] == sum(p.numel() for p in distiller.student.parameters())
    assert costs["teacher_params"] == sum(p.numel() for p in distiller.teacher.parameters())
    assert costs["method_params"] == distiller.get_extra_parameters()
    assert costs["flops_image_size"] == cfg.MODEL.MIN_SIZE == 64
    # the same architecture: the same inference FLOPs, and the first convolution alone is a lower bound
    assert costs["student_gflops"] == costs["teacher_gflops"] > 2 * 64 * 32 * 32 * 3 * 49 / 1e9
