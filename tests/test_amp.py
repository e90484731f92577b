"""Autocast and channels_last: how SOLVER.AMP / SOLVER.CHANNELS_LAST resolve per device, and a
distillation step under bf16 autocast giving finite losses and gradients close to fp32's."""

import pytest
import torch
from yacs.config import CfgNode as CN

from mdistiller.engine import utils
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.fast_path import channels_last_enabled
from mdistiller.errors import ConfigError
from mdistiller.models import cifar_model_dict

from helpers import make_trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


pytestmark = pytest.mark.usefixtures("torch_single_thread")

def solver(amp, dtype="bfloat16"):
    node = CN()
    node.AMP, node.AMP_DTYPE = amp, dtype
    return node


def test_amp_setting_resolution(monkeypatch):
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    assert utils.autocast_dtype(CPU, solver("auto")) == torch.bfloat16
    assert utils.autocast_dtype(CPU, solver(True, "float16")) == torch.bfloat16  # CPU autocast is bf16
    assert utils.autocast_dtype(CPU, solver(False)) is None
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert utils.autocast_dtype(CPU, solver("auto")) is None  # emulated bf16 would be slower
    assert utils.autocast_dtype(CPU, solver(True)) == torch.bfloat16
    with pytest.raises(ConfigError, match="AMP_DTYPE"):
        utils.autocast_dtype(CPU, solver(True, "float8"))

    assert channels_last_enabled("auto", CPU, None) and channels_last_enabled("auto", CUDA, torch.float16)
    assert not channels_last_enabled("auto", CUDA, None) and not channels_last_enabled(False, CPU, torch.bfloat16)


@pytest.mark.parametrize("capability, expected", [
    ((6, 0), torch.float16),  # P100: no bfloat16 at all
    ((7, 0), torch.float16),  # V100: bfloat16 only emulated
    ((7, 5), torch.float16),  # T4: the same
    ((8, 0), torch.bfloat16),  # A100: native
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_cuda_auto_dtype_follows_native_bf16_not_emulation(monkeypatch, capability, expected):
    """SOLVER.AMP auto on CUDA: bfloat16 from compute capability 8.0, else float16 with the grad
    scaler, whatever torch.cuda.is_bf16_supported() (which counts emulation) says."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert utils.cuda_has_native_bf16(CUDA) == (capability[0] >= 8)
    assert utils.autocast_dtype(CUDA, solver("auto")) == expected
    assert utils.autocast_dtype(CUDA, solver(True, "float16")) == torch.float16  # asked for: kept
    assert utils.autocast_dtype(CUDA, solver(True, "bfloat16")) == torch.bfloat16  # asked for: kept
    assert utils.autocast_dtype(CUDA, solver(False)) is None


def test_auto_bool_keys_accept_true_false_auto_only():
    cfg = build_cfg(None, ["SOLVER.AMP=False", "SOLVER.CHANNELS_LAST", "true", "DATASET.PIN_MEMORY=auto"])
    assert cfg.SOLVER.AMP is False and cfg.SOLVER.CHANNELS_LAST is True and cfg.DATASET.PIN_MEMORY == "auto"
    assert build_cfg(None).SOLVER.AMP == "auto"
    for bad in ("SOLVER.AMP=yes", "SOLVER.AMP=1"):
        with pytest.raises(ConfigError, match="True, False or auto"):
            build_cfg(None, [bad])


def kd_trainer(tmp_path, *opts):
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher_file)
    return make_trainer(tmp_path, "DISTILLER.TYPE=KD", "DISTILLER.TEACHER=wrn_16_2",
                        f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", *opts, name="_".join(opts) or "run")


def one_step(trainer):
    torch.manual_seed(0)
    image, target, extra = trainer.to_device(next(iter(trainer.train_loader)))
    trainer.distiller.train()
    with trainer.autocast():
        preds, losses = trainer.train_model(image=image, target=target, epoch=1, **extra)
    loss = sum(losses.values())
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return image, preds, {k: float(v.detach()) for k, v in losses.items()}


def test_bf16_autocast_step_gives_finite_losses_and_gradients(tmp_path):
    fp32 = kd_trainer(tmp_path, "SOLVER.AMP=False", "SOLVER.CHANNELS_LAST=False")
    bf16 = kd_trainer(tmp_path, "SOLVER.AMP=True", "SOLVER.CHANNELS_LAST=True")
    assert fp32.amp_dtype is None and bf16.amp_dtype == torch.bfloat16

    image, preds, losses = one_step(bf16)
    assert preds.dtype == torch.bfloat16  # the student ran under autocast
    assert image.is_contiguous(memory_format=torch.channels_last)
    assert bf16.distiller.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(losses) == {"loss_ce", "loss_kd"} and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    for name, param in bf16.distiller.student.named_parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32, name
        assert torch.isfinite(param.grad).all(), name
    assert all(p.grad is None for p in bf16.distiller.teacher.parameters())

    _, _, reference = one_step(fp32)
    for name, value in reference.items():
        assert losses[name] == pytest.approx(value, rel=0.05), name
    grads = [(p.grad, q.grad) for p, q in zip(bf16.distiller.student.parameters(), fp32.distiller.student.parameters())]
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g, _ in grads]),
                                                   torch.cat([g.flatten() for _, g in grads]), dim=0)
    assert cosine > 0.98

    before = [p.detach().clone() for p in bf16.distiller.student.parameters()]
    image, target, extra = bf16.to_device(next(iter(bf16.train_loader)))
    _, values, total = bf16.train_iter(image, target, extra, epoch=1, step=0)  # the trainer's own step
    assert torch.isfinite(torch.tensor(total)) and set(values) == {"loss_ce", "loss_kd"}
    after = list(bf16.distiller.student.parameters())
    assert all(torch.isfinite(p).all() for p in after) and any(not torch.equal(a, b) for a, b in zip(after, before))


def test_bf16_autocast_step_on_a_timm_vit_student(tmp_path):
    """A timm ViT student (2 px patches at 8 px, two blocks) under bf16 autocast: its forward runs in
    bf16, its float32 gradients are finite and close in direction to an fp32 step's."""
    vit = ("DISTILLER.STUDENT=timm:vit_tiny_patch16_224", "MODEL.STUDENT_KWARGS.patch_size=2",
           "MODEL.STUDENT_KWARGS.embed_dim=32", "MODEL.STUDENT_KWARGS.depth=2", "MODEL.STUDENT_KWARGS.num_heads=2")
    fp32 = kd_trainer(tmp_path, "SOLVER.AMP=False", *vit)
    bf16 = kd_trainer(tmp_path, "SOLVER.AMP=True", *vit)
    assert bf16.amp_dtype == torch.bfloat16
    _, preds, losses = one_step(bf16)
    assert preds.dtype == torch.bfloat16
    assert set(losses) == {"loss_ce", "loss_kd"} and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    student = bf16.distiller.student
    for name, param in student.named_parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32, name
        assert torch.isfinite(param.grad).all(), name
    _, _, reference = one_step(fp32)
    for name, value in reference.items():
        assert losses[name] == pytest.approx(value, rel=0.05), name
    grads = [(p.grad, q.grad) for p, q in zip(student.parameters(), fp32.distiller.student.parameters())]
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g, _ in grads]),
                                                   torch.cat([g.flatten() for _, g in grads]), dim=0)
    assert cosine > 0.98
