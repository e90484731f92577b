"""RepPoints under the dense distillers and tools: one step of every dense method on a RepPoints pair
(the taps and head outputs the methods read), a bf16 autocast step, and the shapes configs through
tools/train_dense.py, tools/eval_dense.py and tools/export.py (resume included)."""

import os

import pytest
import torch

from test_dense_distillers import _check_step, _distiller

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

STUDENT, TEACHER = "reppoints_resnet18_fpn", "reppoints_resnet18_fpn"
TASK_LOSSES = {"loss_cls", "loss_pts_init", "loss_pts_refine"}


@pytest.mark.parametrize("method, extra", [("FREEKD", []), ("CANKD", ["CANKD.LEVELS", "3"]), ("CWD", []),
                                           ("CWD", ["CWD.DOMAIN", "frequency"]), ("PKD", ["PKD.DOMAIN", "frequency"]),
                                           ("MGD", []), ("FGD", []), ("AFPKD", [])])
def test_every_dense_method_steps_on_a_reppoints_pair(tmp_path, method, extra):
    distiller, images, targets = _distiller(tmp_path, method, STUDENT, TEACHER, extra)
    assert len(distiller.t_channels) == 5  # the FPN's P3..P7, tapped at backbone.fpn
    losses = _check_step(distiller, images, targets)
    assert TASK_LOSSES <= set(losses)
    head = [p for p in distiller.student.head.parameters() if p.grad is not None]
    assert head and all(torch.isfinite(p.grad).all() for p in head)
    if method == "FREEKD":
        assert losses["loss_reg"] > 0  # the refined points of the student's and the teacher's heads
    distiller.eval()
    with torch.no_grad():
        detections = distiller(image=images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def test_bf16_autocast_step_gives_finite_losses_and_gradients(tmp_path):
    """At 160 px: CPU bf16 convs give NaN weight gradients, now and then, where the output is 1x1 (P7
    of a 64 px batch), whatever the detector (tests/test_dense_tools_e2e.py runs without AMP for it)."""
    distiller, images, targets = _distiller(tmp_path, "CWD", STUDENT, TEACHER, ["MODEL.MIN_SIZE", "160",
                                                                               "MODEL.MAX_SIZE", "160"])
    distiller.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(image=images, target=targets, epoch=1)
    assert all(torch.isfinite(v) for v in losses.values()) and TASK_LOSSES <= set(losses)
    sum(losses.values()).backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert distiller.student.head.reppoints_pts_refine_conv.weight.grad.abs().sum() > 0  # through deform_conv2d
