"""The student's EMA is scored through the method's prediction path (``forward_test``): SFAKD's
projector and the teacher's classifier, DEIT's softmax fusion of its two heads, not the bare student."""

import pytest
import torch
import torch.nn.functional as F

from mdistiller.dataset import get_dataset
from mdistiller.engine.build import build_distiller
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.trainer import Trainer
from mdistiller.engine.utils import seed_everything
from mdistiller.models import cifar_model_dict

from helpers import STUDENT_CFG

TINY_DEIT = "{'patch_size': 4, 'embed_dim': 24, 'depth': 1, 'num_heads': 2}"
METHODS = {
    "SFAKD": ["DISTILLER.TYPE=SFAKD", "DATASET.IMAGE_SIZE=8"],
    "DEIT": ["DISTILLER.TYPE=DEIT", "DEIT.FUSION=softmax", "DISTILLER.STUDENT=timm:deit_tiny_distilled_patch16_224",
             f"MODEL.STUDENT_KWARGS={TINY_DEIT}"],
}


def ema_trainer(tmp_path, method, decay):
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(1)
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher)
    cfg = build_cfg(STUDENT_CFG, [f"LOG.PREFIX={tmp_path}", "SOLVER.AMP=False", "EXPERIMENT.DETERMINISTIC=True",
                                  f"DISTILLER.TEACHER_WEIGHTS={teacher}", "EMA.ENABLE=True", f"EMA.DECAY={decay}",
                                  "SOLVER.EPOCHS=1", "SOLVER.LR=0.5", *METHODS[method]])
    seed_everything(0, True)
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    trainer = Trainer("run", build_distiller(cfg, num_data, num_classes), train_loader, val_loader, cfg)
    trainer.train_loader = [next(iter(train_loader))]
    trainer.val_loader = [next(iter(val_loader))]
    trainer.distiller.train()
    image, target, extra = trainer.to_device(trainer.train_loader[0])
    trainer.train_iter(image, target, extra, 1, 0)
    return trainer


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_ema_equal_to_the_student_scores_as_the_student(tmp_path, method):
    trainer = ema_trainer(tmp_path, method, decay=0.0)  # ema = 0 * ema + 1 * student: the student itself
    for key, value in trainer.distiller.student.state_dict().items():
        assert torch.equal(trainer.ema.module.state_dict()[key], value), key
    assert trainer.validate_ema() == trainer.validate()
    trainer.distiller.eval()
    bare = trainer.ema.module(trainer.val_loader[0][0].float())[0]  # the student alone predicts otherwise
    assert not torch.allclose(bare, trainer.distiller.forward_test(trainer.val_loader[0][0].float()))


def test_sfakd_ema_scores_its_copy_through_projector_and_teacher_classifier(tmp_path):
    trainer = ema_trainer(tmp_path, "SFAKD", decay=0.5)
    distiller, ema = trainer.distiller, trainer.ema.module
    image, target = trainer.val_loader[0][0].float(), trainer.val_loader[0][1]
    distiller.eval()
    with torch.no_grad():
        feat = ema(image)[1]["feats"][-1]
        size = distiller.feature_size
        pooled = F.adaptive_avg_pool2d(feat, size) if tuple(feat.shape[-2:]) != tuple(size) else feat
        logits = distiller.teacher.fc(distiller.transfer(distiller.sfa(pooled)).mean(dim=(2, 3)))
        raw = distiller.forward_test(image)
    top1, _, loss = trainer.validate_ema()
    assert loss == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert top1 == pytest.approx(100.0 * (logits.argmax(1) == target).float().mean().item())
    assert (logits - raw).abs().max() > 1e-4  # the EMA's prediction is not the raw student's


def test_deit_ema_scores_the_softmax_fusion_of_its_copys_heads(tmp_path):
    trainer = ema_trainer(tmp_path, "DEIT", decay=0.5)
    image, target = trainer.val_loader[0][0].float(), trainer.val_loader[0][1]
    with torch.no_grad():
        cls, dist = trainer.ema.module(image)[1]["head_logits"]
        fused = torch.log((F.softmax(cls, 1) + F.softmax(dist, 1)) / 2)
    _, _, loss = trainer.validate_ema()
    assert loss == pytest.approx(F.cross_entropy(fused, target).item(), rel=1e-5)
