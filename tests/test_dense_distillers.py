"""Each dense distiller, one step on shapes: finite losses, gradients reach the student and the
distiller's modules and never the teacher; the FPN maps both backbones see come from one batch."""

import pytest
import torch

from dense_helpers import dense_cfg, save_initial_prompts, save_teacher
from mdistiller_dense.build import build_dense_distiller
from mdistiller_dense.data import build_dense_datasets, detection_collate
from mdistiller_dense.distillers import DenseDistiller, dense_distiller_dict

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

DETECTION_METHODS = ["CWD", "PKD", "MGD", "FGD", "CANKD", "FREEKD", "AFPKD"]
LEVELS_AT_64 = ["CANKD.LEVELS", "3"]  # 64 px images: the 4th FPN level is 1x1, below the 2x2 pool


def _batch(cfg, detection: bool):
    train, _, num_classes = build_dense_datasets(cfg)
    items = [train[0], train[1]]
    if detection:
        return (*detection_collate(items), num_classes)
    return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), num_classes


def _distiller(tmp_path, method, student="fcos_resnet18_fpn", teacher="fcos_resnet18_fpn", extra=()):
    cfg = dense_cfg(tmp_path, method, student, teacher, extra)
    detection = student.endswith("_fpn")
    images, targets, num_classes = _batch(cfg, detection)
    saved = save_teacher(cfg, num_classes)
    if method in ("FREEKD", "AFPKD"):
        probe = build_dense_distiller(dense_cfg(tmp_path, "CWD", student, teacher, extra), num_classes)
        n = cfg[method].NUM_STAGES
        indices = list(range(len(probe.t_channels) - n, len(probe.t_channels)))
        save_initial_prompts(cfg, saved, [probe.t_channels[i] for i in indices], indices, method)
    torch.manual_seed(0)
    return build_dense_distiller(cfg, num_classes), images, targets


def _check_step(distiller: DenseDistiller, images, targets):
    distiller.train()
    _, losses = distiller(image=images, target=targets, epoch=1)
    assert "loss_kd" in losses and len(losses) >= 2
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    distiller.zero_grad()
    losses["loss_kd"].backward(retain_graph=True)
    backbone_grads = [p.grad for p in distiller.student.backbone.parameters() if p.grad is not None]
    assert backbone_grads and any(g.abs().sum() > 0 for g in backbone_grads), "loss_kd does not reach the student"
    sum(losses.values()).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    for module in distiller.distiller_modules():
        own = [p for p in module.parameters() if p.requires_grad]
        assert all(id(p) in learnable for p in own)
        if own:
            assert all(p.grad is not None for p in own), type(module).__name__
            assert any(p.grad.abs().sum() > 0 for p in own), type(module).__name__
    return losses


@pytest.mark.parametrize("method", DETECTION_METHODS)
def test_detection_distiller_step(tmp_path, method):
    distiller, images, targets = _distiller(tmp_path, method, extra=LEVELS_AT_64)
    losses = _check_step(distiller, images, targets)
    assert {"loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"} <= set(losses)
    if method == "FREEKD":
        assert {"loss_feat", "loss_reg"} <= set(losses)
    if method in ("FREEKD", "AFPKD"):       # stage 2: the prompts are frozen
        assert all(not p.requires_grad and p.grad is None for p in distiller.prompts.parameters())
    distiller.eval()
    with torch.no_grad():
        detections = distiller(image=images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("method", ["CWD", "PKD"])
def test_frequency_domain_step(tmp_path, method):
    distiller, images, targets = _distiller(tmp_path, method, extra=[f"{method}.DOMAIN", "frequency",
                                                                     f"{method}.DWT_LEVELS", "2"])
    assert distiller.frequency
    _check_step(distiller, images, targets)


def test_afpkd_fuses_the_fpn_levels_and_trains_exactly_student_and_its_modules(tmp_path):
    distiller, images, targets = _distiller(tmp_path, "AFPKD", extra=LEVELS_AT_64)
    assert len(distiller.abfs) == 5 and distiller.relation_t is not None
    _check_step(distiller, images, targets)
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    own = {id(p) for m in (distiller.abfs, distiller.relation_t, distiller.relation_s) for p in m.parameters()}
    student = {id(p) for p in distiller.student.parameters() if p.requires_grad}
    assert learnable == student | own


def test_both_backbones_see_the_students_transformed_batch(tmp_path):
    distiller, images, targets = _distiller(tmp_path, "PKD", extra=["MODEL.MIN_SIZE", "96", "MODEL.MAX_SIZE", "96"])
    seen = {}
    distiller.teacher.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("teacher", args[0]))
    distiller.student.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("student", args[0]))
    distiller.train()
    distiller(image=images, target=targets, epoch=1)
    assert seen["teacher"] is seen["student"]
    assert seen["teacher"].shape[-2:] == (96, 96)  # resized from 64 by the student's transform, once


def test_fasterrcnn_freekd_uses_the_rpn_regression(tmp_path):
    extra = ["FREEKD.NUM_STAGES", "2"]
    distiller, images, targets = _distiller(tmp_path, "FREEKD", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet18_fpn",
                                            extra)
    losses = _check_step(distiller, images, targets)
    assert "loss_rpn_box_reg" in losses and "loss_reg" in losses and distiller.teacher_indices == [3, 4]


@pytest.mark.parametrize("method", ["CWD", "CANKD", "FREEKD"])
def test_segmentation_distiller_step_with_channel_alignment(tmp_path, method):
    extra = ["FREEKD.NUM_STAGES", "1", "CANKD.LEVELS", "1"]
    distiller, images, targets = _distiller(tmp_path, method, "fcn_resnet18", "deeplabv3_resnet50", extra)
    assert distiller.s_channels == [512] and distiller.t_channels == [2048]
    losses = _check_step(distiller, images, targets)
    assert "loss_seg" in losses
    distiller.eval()
    with torch.no_grad():
        assert distiller(image=images).shape == (2, 4, 64, 64)


def test_cankd_refuses_maps_smaller_than_its_pool(tmp_path):
    from mdistiller.errors import ConfigError

    with pytest.raises(ConfigError, match="CANKD.POOL_SIZE"):
        _distiller(tmp_path, "CANKD")


def test_fgd_refuses_segmenters_and_registry_is_complete(tmp_path):
    assert set(dense_distiller_dict) == {"NONE", *DETECTION_METHODS}
    from mdistiller.errors import ConfigError

    with pytest.raises(ConfigError, match="detector"):
        _distiller(tmp_path, "FGD", "fcn_resnet18", "fcn_resnet18")


@pytest.mark.parametrize("method,teacher_depth", [("FREEKD", 50), ("CWD", 50), ("CANKD", 34), ("MGD", 34)])
def test_pspnet_pair_distiller_step(tmp_path, method, teacher_depth):
    """The methods tap the decode input (backbone.layer4) of a PSPNet pair as of DeepLabV3; the aux loss stays."""
    extra = ["FREEKD.NUM_STAGES", "1", "CANKD.LEVELS", "1", "MODEL.AUX_LOSS", "True"]
    distiller, images, targets = _distiller(tmp_path, method, "pspnet_resnet18", f"pspnet_resnet{teacher_depth}", extra)
    assert distiller.s_channels == [512] and distiller.t_channels == [2048 if teacher_depth == 50 else 512]
    losses = _check_step(distiller, images, targets)
    assert {"loss_seg", "loss_aux"} <= set(losses)
