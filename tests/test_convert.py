"""mmdetection / mmsegmentation checkpoints onto the dense models (mdistiller_dense.convert, tools/convert_mm.py).

The source state dicts (tests/mm_checkpoints.py) are written from mmdetection's / mmsegmentation's
module definitions and filled with random values; each test checks the converted model's tensors
against the source tensors they came from.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mdistiller.errors import CheckpointError
from mdistiller_dense.convert import convert_mm_state_dict, is_mm_checkpoint, num_classes_of
from mdistiller_dense.models import build_detector, build_segmenter, load_model_weights

sys.path.insert(0, str(Path(__file__).parent))
from mm_checkpoints import (mm_aspp_head, mm_faster_rcnn_heads, mm_fcn_head, mm_fcos_head, mm_file,  # noqa: E402
                            mm_fpn, mm_resnet, mm_retina_head)

K = 4  # foreground classes of the mm checkpoints: the models here have K + 1
R18 = [64, 128, 256, 512]


def retinanet_source() -> dict:
    return {**mm_resnet(18), **mm_fpn(R18, 1, 5, extra="on_input"), **mm_retina_head(K)}


def retinanet() -> torch.nn.Module:
    return build_detector("retinanet_resnet18_fpn", K + 1, 64, 64, frozen_bn=True, fpn_extra="input").eval()


def load_by_hand(model: torch.nn.Module, sd: dict) -> None:
    """The mmdetection RetinaNet-R18 tensors into torchvision's RetinaNet, one module at a time."""
    anchors = 9
    with torch.no_grad():
        body = model.backbone.body
        for name, tensor in [*body.named_parameters(), *body.named_buffers()]:
            tensor.copy_(sd[f"backbone.{name}"])
        fpn = model.backbone.fpn
        for i in range(3):
            for ours, theirs in ((fpn.inner_blocks[i][0], f"neck.lateral_convs.{i}.conv"),
                                 (fpn.layer_blocks[i][0], f"neck.fpn_convs.{i}.conv")):
                ours.weight.copy_(sd[f"{theirs}.weight"])
                ours.bias.copy_(sd[f"{theirs}.bias"])
        for ours, theirs in ((fpn.extra_blocks.p6, "neck.fpn_convs.3.conv"), (fpn.extra_blocks.p7, "neck.fpn_convs.4.conv")):
            ours.weight.copy_(sd[f"{theirs}.weight"])
            ours.bias.copy_(sd[f"{theirs}.bias"])
        head = model.head
        for i in range(4):
            for ours, branch in ((head.classification_head.conv[i][0], "cls"), (head.regression_head.conv[i][0], "reg")):
                ours.weight.copy_(sd[f"bbox_head.{branch}_convs.{i}.conv.weight"])
                ours.bias.copy_(sd[f"bbox_head.{branch}_convs.{i}.conv.bias"])
        logits = head.classification_head.cls_logits
        for a in range(anchors):  # torchvision: anchor-major, label 0 (background) first; mmdet: K per anchor
            logits.weight[a * (K + 1)] = 0
            logits.bias[a * (K + 1)] = -math.log(99)
            logits.weight[a * (K + 1) + 1:(a + 1) * (K + 1)] = sd["bbox_head.retina_cls.weight"][a * K:(a + 1) * K]
            logits.bias[a * (K + 1) + 1:(a + 1) * (K + 1)] = sd["bbox_head.retina_cls.bias"][a * K:(a + 1) * K]
        head.regression_head.bbox_reg.weight.copy_(sd["bbox_head.retina_reg.weight"])
        head.regression_head.bbox_reg.bias.copy_(sd["bbox_head.retina_reg.bias"])


def test_retinanet_converted_equals_loaded_by_hand():
    sd = retinanet_source()
    assert is_mm_checkpoint(mm_file(sd)) and num_classes_of(sd) == K + 1
    converted, by_hand = retinanet(), retinanet()
    converted.load_state_dict(convert_mm_state_dict(mm_file(sd), converted))
    load_by_hand(by_hand, sd)
    for name, tensor in by_hand.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        ours, theirs = converted(images), by_hand(images)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(ours[0][key], theirs[0][key])
    # mmdetection's retina_cls on the same tower output = the foreground logits here
    seen = {}
    converted.head.classification_head.cls_logits.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        converted.head(list(converted.backbone(torch.rand(1, 3, 64, 64)).values())[:1])
    mm = F.conv2d(seen["x"], sd["bbox_head.retina_cls.weight"], sd["bbox_head.retina_cls.bias"], padding=1)
    n, _, h, w = mm.shape
    torch.testing.assert_close(seen["y"].view(n, 9, K + 1, h, w)[:, :, 1:], mm.view(n, 9, K, h, w))


def test_fcos_gn_head_scales_and_centerness():
    sd = {**mm_resnet(18), **mm_fpn(R18, 1, 5, extra="on_output"), **mm_fcos_head(K)}
    model = build_detector("fcos_resnet18_fpn", K + 1, 64, 64, frozen_bn=True)
    state = convert_mm_state_dict(sd, model)
    head = "head.classification_head"
    torch.testing.assert_close(state[f"{head}.conv.3.weight"], sd["bbox_head.cls_convs.1.conv.weight"])
    torch.testing.assert_close(state[f"{head}.conv.4.bias"], sd["bbox_head.cls_convs.1.gn.bias"])  # GroupNorm
    assert not state[f"{head}.conv.3.bias"].any()  # mmdetection's GN tower convs have no bias
    torch.testing.assert_close(state["head.regression_head.conv.9.weight"], sd["bbox_head.reg_convs.3.conv.weight"])
    torch.testing.assert_close(state["head.regression_head.bbox_ctrness.weight"], sd["bbox_head.conv_centerness.weight"])
    torch.testing.assert_close(state[f"{head}.cls_logits.bias"][1:], sd["bbox_head.conv_cls.bias"])
    assert state[f"{head}.cls_logits.bias"][0] == pytest.approx(-math.log(99))
    torch.testing.assert_close(state["backbone.fpn.extra_blocks.p7.weight"], sd["neck.fpn_convs.4.conv.weight"])
    sd["bbox_head.scales.2.scale"] = torch.tensor(1.25)
    with pytest.raises(CheckpointError, match=r"bbox_head\.scales\.2\.scale = 1\.25 has no place"):
        convert_mm_state_dict(sd, model)


def test_faster_rcnn_background_moves_first_and_deltas_per_class():
    sd = {**mm_resnet(18), **mm_fpn(R18, 0, 5), **mm_faster_rcnn_heads(K)}
    model = build_detector("fasterrcnn_resnet18_fpn", K + 1, 64, 64, frozen_bn=True)
    state = convert_mm_state_dict(mm_file(sd), model)
    cls = sd["roi_head.bbox_head.fc_cls.weight"]
    torch.testing.assert_close(state["roi_heads.box_predictor.cls_score.weight"][0], cls[K])  # background
    torch.testing.assert_close(state["roi_heads.box_predictor.cls_score.weight"][1:], cls[:K])
    torch.testing.assert_close(state["roi_heads.box_predictor.bbox_pred.bias"][4:], sd["roi_head.bbox_head.fc_reg.bias"])
    assert not state["roi_heads.box_predictor.bbox_pred.weight"][:4].any()
    torch.testing.assert_close(state["roi_heads.box_head.fc7.weight"], sd["roi_head.bbox_head.shared_fcs.1.weight"])
    torch.testing.assert_close(state["rpn.head.cls_logits.weight"], sd["rpn_head.rpn_cls.weight"])
    torch.testing.assert_close(state["backbone.fpn.inner_blocks.0.0.weight"], sd["neck.lateral_convs.0.conv.weight"])
    torch.testing.assert_close(state["backbone.body.layer2.0.downsample.1.running_var"],
                               sd["backbone.layer2.0.downsample.1.running_var"])
    assert num_classes_of(sd) == K + 1


def test_segmenter_deep_stem_and_fcn_heads():
    sd = {**mm_resnet(18, deep_stem=True), **mm_fcn_head("decode_head.", 512, 128, 3, num_convs=1, concat_input=False),
          **mm_fcn_head("auxiliary_head.", 256, 64, 3, num_convs=1, concat_input=False)}
    model = build_segmenter("fcn_resnet18", 3, aux_loss=True, deep_stem=True)
    state = convert_mm_state_dict(mm_file(sd), model)
    torch.testing.assert_close(state["backbone.stem.3.weight"], sd["backbone.stem.3.weight"])
    torch.testing.assert_close(state["backbone.stem.7.running_mean"], sd["backbone.stem.7.running_mean"])
    torch.testing.assert_close(state["classifier.0.weight"], sd["decode_head.convs.0.conv.weight"])
    torch.testing.assert_close(state["aux_classifier.1.running_var"], sd["auxiliary_head.convs.0.bn.running_var"])
    torch.testing.assert_close(state["aux_classifier.4.bias"], sd["auxiliary_head.conv_seg.bias"])
    assert num_classes_of(sd) == 3
    with pytest.raises(CheckpointError, match="auxiliary_head.conv_seg.weight has no place.*MODEL.AUX_LOSS True"):
        convert_mm_state_dict(sd, build_segmenter("fcn_resnet18", 3, deep_stem=True))


@pytest.mark.parametrize("head, kind, first", [
    (lambda: mm_fcn_head("decode_head.", 512, 128, 3), "fcn", "decode_head.convs.1.conv.weight"),
    (lambda: mm_aspp_head(512, 128, 3), "deeplabv3", "decode_head.conv_seg.weight")])
def test_mmseg_decode_heads_without_a_counterpart(head, kind, first):
    """mmsegmentation's FCNHead (num_convs 2, concat_input) and ASPPHead differ from torchvision's."""
    with pytest.raises(CheckpointError, match=f"{first} has no place"):
        convert_mm_state_dict({**mm_resnet(18), **head()}, build_segmenter(f"{kind}_resnet18", 3))


@pytest.mark.parametrize("name, groups", [("fasterrcnn_resnext101_64x4d_fpn", 64), ("retinanet_resnext101_32x4d_fpn", 32)])
def test_x101_dcn_detectors_convert_on_the_meta_device(name, groups):
    with torch.device("meta"):
        model = build_detector(name, 81, frozen_bn=True, dcn_stages=[3, 4, 5], fpn_extra="input")
        sd = mm_resnet(101, groups, 4, dcn_stages=[3, 4, 5])
        if name.startswith("faster"):
            sd.update({**mm_fpn([256, 512, 1024, 2048], 0, 5), **mm_faster_rcnn_heads(80)})
        else:
            sd.update({**mm_fpn([256, 512, 1024, 2048], 1, 5, extra="on_input"), **mm_retina_head(80)})
    state = convert_mm_state_dict(sd, model)
    assert state["backbone.body.layer4.2.conv2.conv_offset.weight"].shape == (18, 2048 // 64 * groups, 3, 3)
    assert set(state) == set(model.state_dict())


def test_errors_name_the_first_key():
    model = retinanet()
    sd = retinanet_source()
    with pytest.raises(CheckpointError, match="neck.fpn_convs.5.conv.weight has no place"):
        convert_mm_state_dict({**sd, "neck.fpn_convs.5.conv.weight": torch.zeros(256, 256, 3, 3)}, model)
    del sd["bbox_head.reg_convs.2.conv.bias"]
    with pytest.raises(CheckpointError, match=r"head.regression_head.conv.2.0.bias of ours gets no tensor \(1 unfilled"):
        convert_mm_state_dict(sd, model)
    with pytest.raises(CheckpointError, match="retina_cls.weight .*does not fit head.classification_head.cls_logits"):
        convert_mm_state_dict(retinanet_source(), build_detector("retinanet_resnet18_fpn", K + 3, 64, 64,
                                                                 fpn_extra="input"))
    with pytest.raises(CheckpointError, match="fpn_convs.3.conv.weight .*does not fit backbone.fpn.extra_blocks.p6"):
        convert_mm_state_dict(retinanet_source(), build_detector("retinanet_resnet18_fpn", K + 1, 64, 64))
    with pytest.raises(CheckpointError, match="segmenter checkpoint does not fit"):
        convert_mm_state_dict({**mm_resnet(18), **mm_aspp_head(512, 128, 3)}, model)
    with pytest.raises(CheckpointError, match="Not a RetinaNet"):
        convert_mm_state_dict(mm_resnet(18), model)
    assert not is_mm_checkpoint({"model": sd}) and not is_mm_checkpoint({"state_dict": {"fc.weight": torch.zeros(1)}})


def test_teacher_weights_read_an_mmdet_file(tmp_path):
    sd = retinanet_source()
    path = tmp_path / "retinanet_r18_fpn_mmdet.pth"
    torch.save(mm_file(sd), path)
    model = retinanet()
    load_model_weights(model, str(path), "Teacher")
    torch.testing.assert_close(model.backbone.body.layer3[1].bn2.running_mean, sd["backbone.layer3.1.bn2.running_mean"])
    torch.testing.assert_close(model.head.regression_head.bbox_reg.weight, sd["bbox_head.retina_reg.weight"])


@pytest.mark.e2e
def test_convert_tool_writes_a_teacher_file(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
    import convert_mm

    sd = {**mm_resnet(18), **mm_fpn(R18, 1, 5, extra="on_output"), **mm_fcos_head(K)}
    source, out = tmp_path / "fcos_mmdet.pth", tmp_path / "teacher.pth"
    torch.save(mm_file(sd), source)
    convert_mm.main([str(source), str(out), "-m", "fcos_resnet18_fpn", "MODEL.MIN_SIZE", "64"])
    model = build_detector("fcos_resnet18_fpn", K + 1, 64, 64, frozen_bn=True)
    load_model_weights(model, str(out), "Teacher")
    torch.testing.assert_close(model.head.classification_head.conv[0].weight, sd["bbox_head.cls_convs.0.conv.weight"])
    with pytest.raises(CheckpointError, match="not an mmdetection"):
        convert_mm.main([str(out), str(tmp_path / "again.pth"), "-m", "fcos_resnet18_fpn"])
