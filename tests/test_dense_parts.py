"""mdistiller_dense parts: models and weights, hooks, the shapes generator, COCO AP and mIoU."""

import json
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from mdistiller.errors import CheckpointError, ConfigError, UnknownNameError
from mdistiller_dense.data import ShapesSpec, generate_shapes
from mdistiller_dense.data.coco import CocoDetection, load_coco
from mdistiller_dense.evaluation import coco_map, coco_results, confusion_matrix, mean_iou
from mdistiller_dense.hooks import FeatureCapture, as_levels
from mdistiller_dense.models import build_detector, build_segmenter, load_model_weights, parse_model_name

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(str(tmp_path_factory.mktemp("shapes") / "set"), ShapesSpec(6, 5, image_size=64,
                                                                                        min_object_size=10,
                                                                                        max_object_size=24))


def test_model_names():
    assert parse_model_name("retinanet_resnet101_fpn") == ("retinanet", "resnet101")
    assert parse_model_name("deeplabv3_resnet18") == ("deeplabv3", "resnet18")
    for bad in ("fcos_resnet152_fpn", "fcn_resnet50_fpn", "fcos_resnet50", "yolo_resnet18_fpn"):
        with pytest.raises(UnknownNameError):
            parse_model_name(bad)


@pytest.mark.slow
@pytest.mark.parametrize("depth,channels", [(18, 512), (50, 2048)])
def test_segmenters_have_output_stride_8(depth, channels):
    model = build_segmenter(f"deeplabv3_resnet{depth}", 3).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))["out"]
        out = model(torch.zeros(1, 3, 64, 64))["out"]
    assert feats.shape == (1, channels, 8, 8) and out.shape == (1, 3, 64, 64)


def test_hooks_return_the_tensors_the_model_computes():
    torch.manual_seed(0)
    model = build_detector("retinanet_resnet18_fpn", 4, 64, 64).eval()
    capture = FeatureCapture(model, ["backbone.fpn", "backbone.body.layer2"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model.backbone(x)
        fpn, layer2 = capture.pop()
        capture.remove()
        body = model.backbone.body(x)           # the same computation, step by step, without the hooks
        expected = model.backbone.fpn(body)
    assert list(fpn) == ["0", "1", "2", "p6", "p7"]
    assert [level.shape[-1] for level in as_levels([fpn])] == [8, 4, 2, 1, 1]
    for key in expected:
        torch.testing.assert_close(fpn[key], expected[key])
    torch.testing.assert_close(layer2, body["0"])
    assert capture.outputs == {} and not model.backbone.fpn._forward_hooks


def test_hook_on_unknown_module_names_the_closest():
    model = build_segmenter("fcn_resnet18", 3)
    with pytest.raises(ConfigError, match="backbone.layer4"):
        FeatureCapture(model, ["backbone.layer_4"])


@pytest.mark.slow
def test_teacher_weights_from_file_and_errors(tmp_path, monkeypatch):
    torch.manual_seed(1)
    trained = build_detector("fcos_resnet18_fpn", 4, 64, 64)                  # BatchNorm2d, as trained here
    path = tmp_path / "t.pth"
    torch.save({"model": trained.state_dict(), "epoch": 3}, path)
    teacher = build_detector("fcos_resnet18_fpn", 4, 64, 64, frozen_bn=True)  # teachers: frozen BN
    load_model_weights(teacher, str(path), "Teacher")
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, trained.state_dict()[key])
    with pytest.raises(CheckpointError, match="not found"):
        load_model_weights(teacher, str(tmp_path / "missing.pth"), "Teacher")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(teacher, "torchvision:FCOS_ResNet50_FPN_Weights.COCO_V1", "Teacher")
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "https://" in message
    with pytest.raises(CheckpointError, match="Unknown torchvision weights"):
        load_model_weights(teacher, "torchvision:NoSuchWeights.V1", "Teacher")


def test_shapes_boxes_masks_and_label_maps_agree(shapes):
    from pycocotools import mask as mask_utils

    coco = load_coco(f"{shapes}/annotations/instances_train.json")
    assert len(coco.imgs) == 6 and len(json.load(open(f"{shapes}/shapes.json"))) == 7
    assert {c["name"] for c in coco.cats.values()} == {"rectangle", "ellipse", "triangle"}
    for image_id, info in coco.imgs.items():
        label_map = np.asarray(Image.open(f"{shapes}/train/masks/{info['file_name']}"))
        image = np.asarray(Image.open(f"{shapes}/train/images/{info['file_name']}"))
        assert image.shape == (64, 64, 3) and label_map.shape == (64, 64)
        anns = coco.imgToAnns[image_id]
        assert 1 <= len(anns) <= 4
        covered = np.zeros_like(label_map, dtype=bool)
        for ann in anns:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum()
            assert (label_map[mask] == ann["category_id"]).all()
            assert not (covered & mask).any()
            covered |= mask
        assert (label_map[~covered] == 0).all()


def test_coco_dataset_targets_and_flip(shapes):
    data = CocoDetection(f"{shapes}/train/images", f"{shapes}/annotations/instances_train.json", train=True,
                         flip_prob=1.0)
    image, target = data[0]
    ann = data.coco.imgToAnns[data.ids[0]]
    x, y, w, h = ann[0]["bbox"]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    assert target["boxes"][0].tolist() == [64 - x - w, y, 64 - x, y + h]
    assert target["labels"].tolist() == [a["category_id"] for a in ann] and data.num_classes == 4


def _ground_truth_results(coco):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in coco.anns.values()]


def test_map_of_perfect_predictions_is_one_and_of_empty_ones_zero(shapes):
    coco = load_coco(f"{shapes}/annotations/instances_val.json")
    perfect = coco_map(coco, _ground_truth_results(coco))
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    assert coco_map(coco, [])["ap"] == 0.0
    wrong_class = [dict(r, category_id=r["category_id"] % 3 + 1) for r in _ground_truth_results(coco)]
    assert coco_map(coco, wrong_class)["ap"] == pytest.approx(0.0)


def test_coco_results_convert_boxes_and_labels(shapes):
    coco = load_coco(f"{shapes}/annotations/instances_val.json")
    cat_ids = sorted(coco.getCatIds())
    detections, image_ids = [], []
    for image_id in sorted(coco.imgs):
        anns = coco.imgToAnns[image_id]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        boxes[:, 2:] += boxes[:, :2]
        detections.append({"boxes": boxes, "scores": torch.ones(len(anns)),
                           "labels": torch.tensor([cat_ids.index(a["category_id"]) + 1 for a in anns])})
        image_ids.append(image_id)
    assert coco_map(coco, coco_results(detections, image_ids, cat_ids))["ap"] == pytest.approx(1.0)
    # only half the images evaluated: restricting the image ids keeps AP at 1
    half = image_ids[: len(image_ids) // 2]
    assert coco_map(coco, coco_results(detections[: len(half)], half, cat_ids), half)["ap"] == pytest.approx(1.0)


def test_mean_iou_against_sklearn():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 10, 10))
    target[0, :2] = 255
    pred = np.where(rng.random((3, 10, 10)) < 0.6, target % 255, rng.integers(0, 4, size=(3, 10, 10)))
    confusion = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4, 255)
    keep = target != 255
    expected = jaccard_score(target[keep], pred[keep], average="macro", labels=[0, 1, 2, 3])
    assert confusion.sum() == keep.sum()
    assert mean_iou(confusion) == pytest.approx(expected)
    assert mean_iou(confusion_matrix(torch.from_numpy(target % 255), torch.from_numpy(target), 4)) == 1.0
