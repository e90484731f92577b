"""CAT-KD: the loss against a direct formula, the pre-pooling maps of every model, gradients."""

import numpy as np
import pytest
import torch

from mdistiller.distillers import distiller_dict
from mdistiller.distillers.classifier import ClassifierInputRecorder, find_classifier
from mdistiller.engine.cfg import build_cfg
from mdistiller.losses.catkd import cat_loss
from mdistiller.models import cifar_model_dict, imagenet_model_dict


def reference_cat_loss(feat_s, w_s, feat_t, w_t, resolution, normalize):
    """CAMs at full resolution (sum over channels per position), block-averaged to R x R, MSE."""
    def cams(feat, weight):
        b, c, h, w = feat.shape
        out = np.zeros((b, weight.shape[0], resolution, resolution))
        bh, bw = h // resolution, w // resolution
        for k in range(weight.shape[0]):
            cam = (weight[k][None, :, None, None] * feat).sum(axis=1)  # (B, h, w)
            out[:, k] = cam.reshape(b, resolution, bh, resolution, bw).mean(axis=(2, 4))
        if normalize:
            out = out / np.sqrt((out**2).sum(axis=(2, 3), keepdims=True))
        return out
    return float(((cams(feat_s, w_s) - cams(feat_t, w_t)) ** 2).mean())


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("resolution", [1, 2, 4])
def test_cat_loss_matches_formula(resolution, normalize):
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(3, 5, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 7, 4, 4, generator=g, dtype=torch.float64)
    w_s, w_t = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    cam_s = torch.einsum("kc,bchw->bkhw", w_s, f_s)
    cam_t = torch.einsum("kc,bchw->bkhw", w_t, f_t)
    expected = reference_cat_loss(f_s.numpy(), w_s.numpy(), f_t.numpy(), w_t.numpy(), resolution, normalize)
    assert cat_loss(cam_s, cam_t, resolution, normalize).item() == pytest.approx(expected, rel=1e-10)


def build(opts, teacher="resnet32x4", student="resnet8x4", size=16):
    cfg = build_cfg(None, ["DISTILLER.TYPE=CATKD", f"DISTILLER.TEACHER={teacher}", f"DISTILLER.STUDENT={student}",
                           f"DATASET.IMAGE_SIZE={size}", *opts])
    torch.manual_seed(0)
    s = cifar_model_dict[student][0](num_classes=10)
    t = cifar_model_dict[teacher][0](num_classes=10)
    return distiller_dict["CATKD"](s, t, cfg, num_data=10, num_classes=10)


@pytest.mark.parametrize("normalize", [False, True])
def test_distiller_loss_and_bias_free_student(normalize):
    # wrn_16_2 pools relu(bn1(feats[-1])), not feats[-1]: the map is found, not assumed.
    distiller = build([f"CATKD.NORMALIZE={normalize}", "CATKD.LOSS.CAT_WEIGHT=3.0"], "wrn_16_2", "resnet8x4", size=32)
    distiller.eval()
    image, target = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with torch.no_grad():
        logits, losses = distiller.forward_train(image, target)
        _, s_feats = distiller.student(image)
        _, t_feats = distiller.teacher(image)
    s_map = s_feats["feats"][-1]
    t_map = torch.relu(t_feats["preact_feats"][-1])
    w_s, w_t = distiller.student.fc.weight.detach(), distiller.teacher.fc.weight
    expected = 3.0 * reference_cat_loss(s_map.double().numpy(), w_s.double().numpy(), t_map.double().numpy(),
                                        w_t.double().numpy(), 2, normalize)
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-4)
    # The student's classifier is a bias-free 1x1 conv: logits = GAP(CAM_s).
    assert torch.all(distiller.student.fc.bias == 0) and not distiller.student.fc.bias.requires_grad
    torch.testing.assert_close(logits, torch.einsum("kc,bchw->bkhw", w_s, s_map).mean(dim=(2, 3)))
    assert losses["loss_ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize("name, size", [("resnet8", 16), ("resnet8x4", 32), ("wrn_16_2", 16), ("vgg8", 32),
                                        ("ShuffleV1", 32), ("ShuffleV2", 32), ("MobileNetV2", 32), ("ResNet18", 16)])
def test_recorded_map_is_what_the_classifier_pools(name, size):
    torch.manual_seed(0)
    model = cifar_model_dict[name][0](num_classes=10)
    recorder = ClassifierInputRecorder(model, size)
    model.train()
    logits, feats = model(torch.randn(2, 3, size, size))
    recorded = recorder.pop()
    classifier = find_classifier(model)[1]
    assert recorded.dim() == 4 and recorded.shape[1] == classifier.in_features
    torch.testing.assert_close(recorded.mean(dim=(2, 3)), feats["pooled_feat"])
    torch.testing.assert_close(classifier(recorded.mean(dim=(2, 3))), logits)
    with pytest.raises(RuntimeError):
        recorder.pop()


@pytest.mark.parametrize("name", ["ResNet18", "MobileNetV1"])
def test_recorded_map_imagenet_models(name):
    torch.manual_seed(0)
    model = imagenet_model_dict[name](pretrained=False)
    recorder = ClassifierInputRecorder(model, 64)
    model.eval()
    with torch.no_grad():
        _, feats = model(torch.randn(1, 3, 64, 64))
    recorded = recorder.pop()
    torch.testing.assert_close(recorded, feats["feats"][-1])


def test_gradients_reach_the_student_only():
    distiller = build([], "resnet8x4", "resnet8")
    distiller.train()
    _, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=1)
    sum(losses.values()).backward()
    for name, p in distiller.student.named_parameters():
        assert (p.grad is None) == (name == "fc.bias"), name
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    assert learnable == {id(p) for n, p in distiller.student.named_parameters() if n != "fc.bias"}
    assert distiller.get_extra_parameters() == 0
