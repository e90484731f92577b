"""RepPoints (mdistiller_dense/reppoints.py): head output shapes, the moment transform and both
assigners on hand-worked cases, the losses against the formulas written here, gradients, the
full-size parameter counts against mmdetection's module definitions, and an mmdetection
RepPoints state dict converted with every tensor placed."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mdistiller_dense.convert import convert_mm_state_dict, num_classes_of
from mdistiller_dense.models import build_detector
from mdistiller_dense.reppoints import (BACKGROUND, IGNORED, RepPointsHead, locations, max_iou_assign, moment_box,
                                        point_assign)

sys.path.insert(0, str(Path(__file__).parent))
from mm_checkpoints import mm_file, mm_fpn, mm_reppoints_head, mm_resnet  # noqa: E402

R50 = [256, 512, 1024, 2048]


def tiny_head(num_classes: int = 3, **kwargs) -> RepPointsHead:
    return RepPointsHead(32, num_classes, feat_channels=32, point_feat_channels=8, stacked_convs=1, **kwargs)


def test_head_outputs_per_level_and_flattened():
    torch.manual_seed(0)
    head = tiny_head()
    features = [torch.randn(2, 32, 6, 5), torch.randn(2, 32, 3, 3), torch.randn(2, 32, 2, 1)]
    cls, init, refine = head.forward_level(features[0])
    assert cls.shape == (2, 3, 6, 5) and init.shape == refine.shape == (2, 18, 6, 5)
    out = head(features)
    assert set(out) == {"cls_logits", "pts_init", "bbox_regression"}
    assert out["cls_logits"].shape == (2, 30 + 9 + 2, 3)
    assert out["pts_init"].shape == out["bbox_regression"].shape == (2, 41, 18)
    # row-major per level, levels in order: location (row 1, column 2) of level 0 is index 1 * 5 + 2
    torch.testing.assert_close(out["bbox_regression"][:, 7], refine[:, :, 1, 2])
    torch.testing.assert_close(out["cls_logits"][:, 30 + 4], head.forward_level(features[1])[0][:, :, 1, 1])
    centres, strides = locations([(6, 5), (3, 3)], (8, 16), torch.device("cpu"))
    assert centres[7].tolist() == [16.0, 8.0] and centres[30 + 5].tolist() == [32.0, 16.0]
    assert strides.tolist() == [8.0] * 30 + [16.0] * 9


def test_moment_box_hand_worked_and_its_multiplier_gradient():
    points = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # x: mean 2, std sqrt(2); y: mean 4, std sqrt(8)
    transfer = torch.tensor([0.0, math.log(0.5)], requires_grad=True)
    box = moment_box(points, transfer, moment_mul=0.01)
    r = math.sqrt(2)  # half width sqrt(2) * e^0, half height sqrt(8) * 0.5
    torch.testing.assert_close(box, torch.tensor([2 - r, 4 - r, 2 + r, 4 + r]))
    box[2].backward()  # d x2 / d lambda_w = half width, scaled by moment_mul
    torch.testing.assert_close(transfer.grad, torch.tensor([0.01 * r, 0.0]))
    nine = torch.tensor([[x, y] for y in (-1.0, 0.0, 1.0) for x in (-2.0, 0.0, 2.0)])  # 3x3 grid
    half_x, half_y = np.std([-2, 0, 2] * 3, ddof=1), np.std([-1, 0, 1] * 3, ddof=1)
    torch.testing.assert_close(moment_box(nine, torch.zeros(2)),
                               torch.tensor([-half_x, -half_y, half_x, half_y], dtype=torch.float32))


def test_point_assigner_hand_worked():
    # stride 8 locations at x = 0, 8, 16, 24 (y = 0) and stride 16 locations at x = 0, 16, 32 (y = 0)
    points = torch.tensor([[0.0, 0], [8, 0], [16, 0], [24, 0], [0, 0], [16, 0], [32, 0]])
    strides = torch.tensor([8.0] * 4 + [16.0] * 3)
    boxes = torch.tensor([
        [-6.0, -10, 26, 22],   # 32 x 32: level int((log2 8 + log2 8) / 2) = 3, centre (10, 6): nearest (8, 0)
        [-4.0, -32, 60, 32],   # 64 x 64: level 4, centre (28, 0): nearest stride-16 point (32, 0)
        [15.0, -2, 19, 2],     # 4 x 4: level 1, clamped to 3; centre (17, 0): nearest (16, 0)
    ])
    assert point_assign(points, strides, boxes).tolist() == [BACKGROUND, 0, 2, BACKGROUND, BACKGROUND,
                                                             BACKGROUND, 1]
    # two boxes on the same nearest location: the nearer (relative to its size) keeps it
    rival = torch.tensor([[-6.0, -10, 26, 22], [-9.0, -16, 23, 16]])  # centres (10, 6), (7, 0)
    assert point_assign(points, strides, rival).tolist() == [BACKGROUND, 1] + [BACKGROUND] * 5
    assert point_assign(points, strides, rival, pos_num=2).tolist() == [1, 1, 0] + [BACKGROUND] * 4
    assert point_assign(points, strides, torch.zeros(0, 4)).tolist() == [BACKGROUND] * 7


def test_max_iou_assigner_hand_worked():
    gt = torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]])
    candidates = torch.tensor([
        [0.0, 0, 10, 6],      # IoU 0.6 with box 0: positive
        [0.0, 0, 10, 4.5],    # 0.45: between the thresholds, ignored
        [0.0, 0, 10, 1],      # 0.1: background
        [103.0, 100, 113, 110],  # 70 / 130 = 0.54 with box 1: positive
        [50.0, 50, 60, 60],   # 0
    ])
    assert max_iou_assign(candidates, gt).tolist() == [0, IGNORED, BACKGROUND, 1, BACKGROUND]
    low = torch.tensor([[0.0, 0, 10, 3], [0.0, 0, 10, 2]])  # best IoU 0.3 < 0.4: still box 0's best match
    assert max_iou_assign(low, gt[:1]).tolist() == [0, BACKGROUND]


def _grid_offsets(half: float) -> list:
    """(dy, dx) of a 3x3 grid of spacing ``half`` (in strides), row-major."""
    return [v for dy in (-half, 0.0, half) for dx in (-half, 0.0, half) for v in (dy, dx)]


def test_losses_equal_the_formulas_on_a_tiny_case():
    """One 2x2 level (stride 8: locations (0, 0), (8, 0), (0, 8), (8, 8)), one box [4, 4, 14, 14]
    of class 2 (level 3 by the point assigner, nearest location (8, 8)), head outputs set by hand."""
    head = tiny_head(num_classes=3)
    with torch.no_grad():
        head.moment_transfer.copy_(torch.tensor([0.1, -0.2]))
    init = torch.tensor([_grid_offsets(0.3), _grid_offsets(0.5), _grid_offsets(0.2), _grid_offsets(0.7)])
    init[1, 0::2] += 1.0  # location (8, 0): its points moved down one stride (IoU 0.43)
    init[3, 1::2] += 0.1  # location (8, 8): its points shifted right by 0.8 px (IoU 0.75)
    refine = init + 0.05 * torch.arange(18.0)
    logits = torch.tensor([[-2.0, 0.5, 1.0], [0.0, -1.0, 2.0], [1.0, 1.0, -3.0], [-1.0, 0.3, 0.7]])
    out = {"cls_logits": logits[None], "pts_init": init[None], "bbox_regression": refine[None]}
    gt = np.array([4.0, 4, 14, 14])
    losses = head.compute_loss([{"boxes": torch.tensor([gt.tolist()]), "labels": torch.tensor([2])}], out,
                               [(2, 2)], [(16, 16)])

    centres = np.array([[0.0, 0], [8, 0], [0, 8], [8, 8]])
    transfer = np.exp([0.1, -0.2])

    def box(offsets, c):  # moment box, written out
        pts = np.asarray(offsets, dtype=np.float64).reshape(9, 2)[:, ::-1] * 8 + c
        mean, half = pts.mean(0), pts.std(0, ddof=1) * transfer
        return np.concatenate([mean - half, mean + half])

    def iou(a, b):
        w, h = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
        return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)

    def smooth_l1(a, b, beta=0.11):
        d = np.abs(a - b)
        return np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).sum()

    ious = [iou(box(init[i].tolist(), centres[i]), gt) for i in range(4)]
    # the case as built: location 3 positive (>= 0.5), 1 between 0.4 and 0.5 (ignored), 0 and 2 background
    assert ious[3] >= 0.5 and 0.4 <= ious[1] < 0.5 and ious[0] < 0.4 and ious[2] < 0.4, ious
    p = 1 / (1 + np.exp(-logits.double().numpy()))
    target = np.zeros((4, 3))
    target[3, 2] = 1
    focal = -(0.25 * target * (1 - p) ** 2 * np.log(p) + 0.75 * (1 - target) * p ** 2 * np.log(1 - p))
    expected_cls = focal[[0, 2, 3]].sum() / 1
    norm = 4 * 8
    expected_init = 0.5 * smooth_l1(box(init[3].tolist(), centres[3]) / norm, gt / norm) / 1
    expected_refine = 1.0 * smooth_l1(box(refine[3].tolist(), centres[3]) / norm, gt / norm) / 1
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_pts_init"].item() == pytest.approx(expected_init, rel=1e-5)
    assert losses["loss_pts_refine"].item() == pytest.approx(expected_refine, rel=1e-5)


def test_gradient_mul_scales_what_the_refine_stage_sends_to_the_initial_points():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 5, 5)
    grads = []
    for mul in (1.0, 0.1):
        torch.manual_seed(1)
        head = tiny_head(gradient_mul=mul)
        with torch.no_grad():
            head.reppoints_pts_init_out.weight.normal_(std=0.5)  # offsets of a pixel or so: sampling varies
        cls, _, _ = head.forward_level(x)
        cls.sum().backward()
        grads.append(head.reppoints_pts_init_out.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], 0.1 * grads[0], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_gradients_reach_head_neck_and_backbone_and_detections_come_back():
    torch.manual_seed(0)
    model = build_detector("reppoints_resnet18_fpn", 5, 64, 64)  # from scratch: every layer trains
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 40, 40]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 8, 30, 40], [20, 4, 60, 44]]), "labels": torch.tensor([2, 4])}]
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_pts_init", "loss_pts_refine"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []
    assert model.head.moment_transfer.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model.head.reppoints_cls_out.bias.fill_(0.0)  # scores 0.5: every location a candidate
        detections = model(images)
    assert len(detections) == 2 and detections[1]["boxes"].shape[1] == 4
    assert 0 < detections[0]["boxes"].shape[0] <= 100
    assert detections[0]["labels"].min() >= 1  # the background row is never detected
    assert (detections[1]["boxes"][:, 2] <= 64).all() and (detections[1]["boxes"][:, 3] <= 48).all()


def mm_parameters(sd: dict) -> int:
    """Parameters of an mmdetection state dict: every tensor but BatchNorm's statistics."""
    return sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.parametrize("name, depth, groups, dcn", [("reppoints_resnet50_fpn", 50, 1, []),
                                                      ("reppoints_resnext101_32x4d_fpn", 101, 32, [3, 4, 5])])
def test_full_size_parameter_count_equals_mmdetections(name, depth, groups, dcn):
    """mmdetection's reppoints_moment_{r50,x101-dconv-c3-c5}_fpn_gn-neck+head_2x_coco, counted from
    tests/mm_checkpoints.py (the shapes of mmdetection's ResNet / ResNeXt, FPN(GN, on_input) and
    RepPointsHead(80 classes)); ours has one classifier row more (the background, 256 + 1).
    By hand for R50: ResNet-50 without fc 23,508,032 + FPN 7,999,488 + head 5,341,558 = 36,849,078."""
    with torch.device("meta"):
        model = build_detector(name, 81, frozen_bn=False, dcn_stages=dcn)  # BatchNorm2d: weights are parameters
        sd = {**mm_resnet(depth, groups, 4, dcn_stages=dcn), **mm_fpn(R50, 1, 5, extra="on_input", gn=True),
              **mm_reppoints_head(80)}
    ours = sum(p.numel() for p in model.parameters())
    assert ours == mm_parameters(sd) + 257
    if depth == 50:
        assert mm_parameters(sd) == 23_508_032 + 7_999_488 + 5_341_558
    state = convert_mm_state_dict(sd, model)
    assert set(state) == set(model.state_dict())


def test_mmdetection_reppoints_state_dict_converts_with_every_tensor_placed():
    k = 4
    sd = {**mm_resnet(18), **mm_fpn([64, 128, 256, 512], 1, 5, extra="on_input", gn=True), **mm_reppoints_head(k)}
    assert num_classes_of(sd) == k + 1
    model = build_detector("reppoints_resnet18_fpn", k + 1, 64, 64, frozen_bn=True).eval()
    state = convert_mm_state_dict(mm_file(sd), model)
    model.load_state_dict(state)
    for key, value in sd.items():
        if key.startswith("bbox_head.") and "reppoints_cls_out" not in key:
            torch.testing.assert_close(state["head." + key[len("bbox_head."):]], value, rtol=0, atol=0)
    torch.testing.assert_close(state["head.reppoints_cls_out.weight"][1:], sd["bbox_head.reppoints_cls_out.weight"])
    assert state["head.reppoints_cls_out.bias"][0] == pytest.approx(-math.log(99))
    torch.testing.assert_close(state["backbone.fpn.extra_blocks.p6.0.weight"], sd["neck.fpn_convs.3.conv.weight"])
    torch.testing.assert_close(state["backbone.fpn.extra_blocks.p7.1.bias"], sd["neck.fpn_convs.4.gn.bias"])
    torch.testing.assert_close(state["backbone.fpn.inner_blocks.2.1.weight"], sd["neck.lateral_convs.2.gn.weight"])
    torch.testing.assert_close(state["backbone.body.layer3.1.bn2.running_mean"], sd["backbone.layer3.1.bn2.running_mean"])
    assert model.backbone.fpn.extra_blocks.p6[0].in_channels == 512  # P6 reads C5 (on_input)


def test_nan_points_reach_the_outputs_without_crashing_the_deformable_convs():
    """torchvision's deform_conv2d kernels index out of bounds on NaN offsets (a segfault on a CPU)."""
    head = tiny_head()
    with torch.no_grad():
        head.reppoints_pts_init_out.bias[0] = float("nan")
    cls, init, refine = head.forward_level(torch.randn(1, 32, 4, 4))
    assert torch.isnan(init).any() and torch.isnan(refine).any()  # the losses see them
    assert torch.isfinite(cls).all()  # sampled at the location itself where the offset is NaN


def test_names_on_every_backbone_and_a_near_miss():
    from mdistiller.errors import UnknownNameError
    from mdistiller_dense.models import BACKBONES, parse_model_name, task_of

    for backbone in BACKBONES:
        assert parse_model_name(f"reppoints_{backbone}_fpn") == ("reppoints", backbone)
    assert task_of("reppoints_resnext101_64x4d_fpn") == "detection"
    with pytest.raises(UnknownNameError, match="Did you mean reppoints_resnet50_fpn"):
        parse_model_name("reppoints_resnet50")
