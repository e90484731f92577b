"""DeiT's distillation token: the hard and soft losses and the two fusions against the paper's
formulas in numpy, on heads read from timm's own distilled-training forward; the teacher's input;
the gradient contract."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError, IncompatibleModelError
from mdistiller.losses.deit import late_fusion, soft_distillation_loss
from mdistiller.models import cifar_model_dict
from tests.distiller_step import train_step
from tests.tiny_models import SIZE, tiny


def build_deit(*opts, student="deit_distilled"):
    cfg = build_cfg(None, ["DISTILLER.TYPE=DEIT", f"DATASET.IMAGE_SIZE={SIZE}", *opts])
    torch.manual_seed(0)
    s, t = tiny(student, 10), cifar_model_dict["resnet8"][0](num_classes=10)
    return distiller_dict["DEIT"](s, t, cfg, num_classes=10, num_data=8)


def timm_heads(distiller, image):
    """(class-token logits, distillation-token logits) from timm's own forward in distilled training."""
    vit = distiller.student.model
    vit.set_distilled_training(True)
    vit.train()
    try:
        with torch.no_grad():
            cls, dist = vit(image)
    finally:
        vit.set_distilled_training(False)
    return cls.double().numpy(), dist.double().numpy()


def train_forward(distiller, image, target):
    """The distiller's training outputs, then the references: timm's two heads and the teacher's logits."""
    distiller.train()
    fused, losses = distiller(image=image, target=target)
    cls, dist = timm_heads(distiller, image)
    with torch.no_grad():
        teacher = distiller.teacher(image)[0].double().numpy()
    return fused, losses, cls, dist, teacher


def ce(logits, classes):
    return float(-log_softmax(logits, axis=1)[np.arange(len(classes)), classes].mean())


def kl_sum(dist, teacher, tau):
    p_t = softmax(teacher / tau, axis=1)
    return float((p_t * (np.log(p_t) - log_softmax(dist / tau, axis=1))).sum())


def test_hard_distillation_matches_the_formula():
    distiller = build_deit("DEIT.ALPHA=0.3")
    image, target = torch.randn(4, 3, SIZE, SIZE), torch.tensor([1, 2, 3, 4])
    fused, losses, cls, dist, teacher = train_forward(distiller, image, target)
    assert losses["loss_ce"].item() == pytest.approx(0.7 * ce(cls, target.numpy()), rel=1e-5)
    assert losses["loss_kd"].item() == pytest.approx(0.3 * ce(dist, teacher.argmax(1)), rel=1e-5)
    np.testing.assert_allclose(fused.detach().double().numpy(), (cls + dist) / 2, rtol=1e-5, atol=1e-6)


def test_soft_target_cross_entropy_under_mixing():
    """A (N, K) target: the class head's term is (1 - ALPHA) * mean_i -sum_k y_ik log softmax(cls)_ik
    (DeiT's SoftTargetCrossEntropy under mixup), the distillation head still learns the teacher's arg-max."""
    distiller = build_deit("DEIT.ALPHA=0.4")
    g = torch.Generator().manual_seed(5)
    image, soft = torch.randn(4, 3, SIZE, SIZE, generator=g), torch.softmax(torch.randn(4, 10, generator=g) * 2, dim=1)
    _, losses, cls, dist, teacher = train_forward(distiller, image, soft)
    y = soft.double().numpy()
    assert losses["loss_ce"].item() == pytest.approx(0.6 * float(-(y * log_softmax(cls, axis=1)).sum(1).mean()),
                                                     rel=1e-5)
    assert losses["loss_kd"].item() == pytest.approx(0.4 * ce(dist, teacher.argmax(1)), rel=1e-5)


@pytest.mark.parametrize("scale,divisor", [("code", "batch*classes"), ("paper", "batch")])
def test_soft_distillation_matches_the_formula(scale, divisor):
    distiller = build_deit("DEIT.TYPE=soft", "DEIT.TAU=3.0", "DEIT.ALPHA=0.1", f"DEIT.SOFT_SCALE={scale}")
    _, losses, _, dist, teacher = train_forward(distiller, torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 0, 5, 9]))
    count = 4 * 10 if divisor == "batch*classes" else 4
    assert losses["loss_kd"].item() == pytest.approx(0.1 * 9.0 * kl_sum(dist, teacher, 3.0) / count, rel=1e-4)


def test_code_scale_is_the_paper_scale_over_the_class_count():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    paper = soft_distillation_loss(s, t, 2.0, per_class_mean=False).item()
    assert paper == pytest.approx(4.0 * kl_sum(s.numpy(), t.numpy(), 2.0) / 3, rel=1e-10)
    assert soft_distillation_loss(s, t, 2.0, per_class_mean=True).item() == pytest.approx(paper / 7, rel=1e-10)


def test_the_two_fusions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(late_fusion(a, b).numpy(), (a.numpy() + b.numpy()) / 2)
    fused = (softmax(a.numpy(), axis=1) + softmax(b.numpy(), axis=1)) / 2
    np.testing.assert_allclose(late_fusion(a, b, softmax=True).numpy(), np.log(fused), rtol=1e-12)
    # the fusions can disagree: a very negative logit outvotes in the mean of logits, not of probabilities
    a, b = torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([[-20.0, 5.0, 0.0]])
    assert late_fusion(a, b).argmax().item() == 1  # (10 - 20) / 2 < 5 / 2
    assert late_fusion(a, b, softmax=True).argmax().item() == 0  # ~0.5 for class 0 against ~0.5 for class 1


def test_eval_uses_the_chosen_fusion():
    distiller = build_deit("DEIT.FUSION=softmax").eval()
    image = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = distiller(image=image)
        cls, dist = distiller.student(image)[1]["head_logits"]
    expected = np.log((softmax(cls.double().numpy(), axis=1) + softmax(dist.double().numpy(), axis=1)) / 2)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_teacher_sees_the_students_images():
    distiller = build_deit()
    seen = []
    distiller.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    image = torch.randn(2, 3, SIZE, SIZE)
    mixed = 0.6 * image + 0.4 * image.flip(0)  # what a batch-mode mixup hands the distiller
    distiller.train()
    distiller(image=mixed, target=torch.tensor([[0.6] + [0.0] * 8 + [0.4], [0.4] + [0.0] * 8 + [0.6]]))
    assert len(seen) == 1 and torch.equal(seen[0], mixed)


def test_gradients_reach_exactly_the_student_heads_and_tokens():
    distiller = build_deit()
    image, target = torch.randn(2, 3, SIZE, SIZE), torch.tensor([3, 8])
    train_step(distiller, {"image": image, "target": target})
    vit = distiller.student.model
    assert vit.dist_token.grad.abs().sum() > 0 and vit.head_dist.weight.grad.abs().sum() > 0
    assert distiller.get_extra_parameters() == 0


def test_a_student_without_a_distillation_token_is_refused():
    with pytest.raises(IncompatibleModelError, match="distillation token"):
        build_deit(student="vit")


def test_unknown_type_is_refused():
    with pytest.raises(ConfigError, match="DEIT.TYPE 'medium' is not one of hard, soft"):
        build_deit("DEIT.TYPE=medium")
