"""The CUDA paths of the trainer, checked on the CPU with torch.cuda's functions stood in for:
the kernel choice of EXPERIMENT.DETERMINISTIC across epochs, the GPU RNG state a checkpoint
holds (the trainer's device only; older checkpoints with every GPU's state still load)."""

import random

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from mdistiller.engine import utils
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint

from helpers import make_trainer, poison

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("deterministic", [True, False])
def test_kernel_choice_survives_the_per_epoch_reseed(tmp_path, monkeypatch, deterministic):
    trainer = make_trainer(tmp_path, f"EXPERIMENT.DETERMINISTIC={deterministic}", "SOLVER.EPOCHS=1")
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    trainer.train_epoch(1)
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.backends.cudnn.deterministic is deterministic
    assert torch.are_deterministic_algorithms_enabled() is deterministic


class FakeCudaRng:
    """torch.cuda's RNG functions for `count` GPUs whose states are tensor([index])."""

    def __init__(self, monkeypatch, count: int) -> None:
        self.count = count
        self.set_calls = []
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self.refuse)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.refuse)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def get(self, device="cuda"):
        index = torch.device(device).index or 0
        if index >= self.count:
            raise IndexError(f"no GPU {index}")
        return torch.tensor([index], dtype=torch.uint8)

    def set(self, state, device="cuda"):
        index = torch.device(device).index or 0
        if index >= self.count:
            raise IndexError(f"no GPU {index}")
        self.set_calls.append((int(state[0]), index))

    def refuse(self, *args, **kwargs):
        raise AssertionError("every GPU's RNG state touched")


def test_rng_state_holds_the_trainer_gpu_only_and_round_trips(tmp_path, monkeypatch):
    fake = FakeCudaRng(monkeypatch, count=4)
    device = torch.device("cuda", 2)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    state = utils.rng_state(device)
    assert torch.equal(state["cuda"], torch.tensor([2], dtype=torch.uint8))
    assert "cuda" not in utils.rng_state(torch.device("cpu"))
    save_checkpoint({"rng": state}, str(tmp_path / "ckpt"))
    loaded = load_checkpoint(str(tmp_path / "ckpt"))["rng"]  # weights_only
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(6)
    random.seed(6)
    np.random.seed(6)
    utils.set_rng_state(loaded, device)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert fake.set_calls == [(2, 2)]


@pytest.mark.parametrize("saved_gpus, device, restored", [
    (8, torch.device("cuda", 0), [(0, 0)]),  # written on 8 GPUs, resumed on 1
    (4, torch.device("cuda", 1), [(1, 1)]),  # each process takes its own entry
    (1, torch.device("cuda", 1), []),  # no entry for this GPU: its state is left as it is
])
def test_checkpoint_with_every_gpu_state_loads_on_fewer(tmp_path, monkeypatch, saved_gpus, device, restored):
    fake = FakeCudaRng(monkeypatch, count=2)
    state = utils.rng_state(torch.device("cpu"))
    state["cuda"] = [torch.tensor([i], dtype=torch.uint8) for i in range(saved_gpus)]  # the old layout
    save_checkpoint({"rng": state}, str(tmp_path / "old"))
    utils.set_rng_state(load_checkpoint(str(tmp_path / "old"))["rng"], device)
    assert fake.set_calls == restored
    utils.set_rng_state(state, torch.device("cpu"))  # a CPU run ignores GPU states
    assert fake.set_calls == restored


PRECISION_BACKENDS = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul,
                      torch.backends.mkldnn.conv)


def test_fold_check_runs_without_tf32_and_restores_the_settings(monkeypatch):
    """The BatchNorm-fold equality check compares in full float32: TF32 (and oneDNN's reduced
    precision) off while it runs, the user's settings back after, also after an error."""
    from mdistiller.engine import fast_teacher
    from mdistiller.models import cifar_model_dict

    seen = []
    compare = fast_teacher.max_relative_difference

    def recording(a, b):
        seen.append(tuple(backend.fp32_precision for backend in PRECISION_BACKENDS))
        return compare(a, b)

    monkeypatch.setattr(fast_teacher, "max_relative_difference", recording)
    user = ("tf32", "tf32", "bf16", "bf16")
    before = [backend.fp32_precision for backend in PRECISION_BACKENDS]
    try:
        for backend, setting in zip(PRECISION_BACKENDS, user):
            backend.fp32_precision = setting
        model = cifar_model_dict["resnet8"][0](num_classes=10).eval()
        fast_teacher.fold_batchnorm(model, torch.randn(2, 3, 8, 8))
        assert seen and all(s == ("ieee",) * 4 for s in seen)
        assert tuple(backend.fp32_precision for backend in PRECISION_BACKENDS) == user
        with pytest.raises(RuntimeError, match="inside"):
            with fast_teacher.full_fp32_precision():
                raise RuntimeError("inside")
        assert tuple(backend.fp32_precision for backend in PRECISION_BACKENDS) == user
    finally:
        for backend, setting in zip(PRECISION_BACKENDS, before):
            backend.fp32_precision = setting


NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def test_skipped_step_restores_normalisation_statistics_and_copies_nothing_else(tmp_path):
    """SOLVER.SKIP_NONFINITE: a skipped step puts back the running statistics of every BatchNorm
    outside the teacher, bit for bit, and copies no other buffer (not CRD's memory banks)."""
    from mdistiller.models import cifar_model_dict

    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher_file)
    trainer = make_trainer(tmp_path, "DISTILLER.TYPE=CRD", "SOLVER.TRAINER=crd", "CRD.NCE.K=16",
                           "DISTILLER.TEACHER=wrn_16_2", f"DISTILLER.TEACHER_WEIGHTS={teacher_file}",
                           "SOLVER.SKIP_NONFINITE=True")
    names = {buffer.data_ptr(): name for name, buffer in trainer.distiller.named_buffers()}
    restored = sorted(names[b.data_ptr()] for b in trainer.restored_buffers())
    expected = sorted(name for name in names.values()
                      if name.rsplit(".", 1)[-1] in NORM_STATISTICS and not name.startswith("teacher."))
    assert restored == expected and any(name.startswith("embed_s.") or name.startswith("student.") for name in restored)
    assert not any("memory" in name for name in restored)

    image, target, extra = trainer.to_device(next(iter(trainer.train_loader)))
    trainer.distiller.train()
    before = {name: b.clone() for name, b in trainer.distiller.named_buffers()}
    params = [p.detach().clone() for p in trainer.distiller.parameters()]
    poison(trainer, from_call=1, term="loss_kd")
    _, values, _ = trainer.train_iter(image, target, extra, epoch=1, step=0)
    assert values is None and trainer.skipped_steps == 1
    after = dict(trainer.distiller.named_buffers())
    for name in expected:
        assert torch.equal(after[name], before[name]), name
    assert all(torch.equal(p, q) for p, q in zip(trainer.distiller.parameters(), params))
    # the forward pass did move them (so restoring them is what kept them)
    with torch.no_grad():
        trainer.distiller(image=image, target=target, epoch=1, **extra)
    assert not torch.equal(trainer.distiller.student.bn1.running_mean, before["student.bn1.running_mean"])


@pytest.mark.parametrize("channels_last", [True, False])
def test_trainer_batches_follow_solver_channels_last(tmp_path, channels_last):
    """DATASET.FAST_AUG batches reach the step in the layout SOLVER.CHANNELS_LAST asks for."""
    trainer = make_trainer(tmp_path, f"SOLVER.CHANNELS_LAST={channels_last}")
    assert trainer.channels_last is channels_last
    for loader in (trainer.train_loader, trainer.val_loader):
        image = trainer.to_device(next(iter(loader)))[0]
        assert image.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert image.is_contiguous() is not channels_last


# Tensor methods that read a tensor's values to the host (on a GPU each waits for the device).
HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__,
              torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}


class HostReads(TorchFunctionMode):
    """Counts the reads of tensor values to the host inside the block: the Python-level ones
    (HOST_READS) and the scalar reads made inside torch (aten._local_scalar_dense)."""

    def __init__(self) -> None:
        super().__init__()
        self.python, self.scalars = [], ScalarReads()

    def __enter__(self):
        self.scalars.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.scalars.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.python.append(func.__name__)
        return func(*args, **(kwargs or {}))


class ScalarReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_a_training_step_reads_the_device_once(tmp_path, skip_nonfinite):
    """The loss terms, the meters' values and the agreed non-finite flags and stop signal come to
    the host in one read per step, after the forward pass; the meters hold the same numbers as
    the loss and accuracy computed apart."""
    from mdistiller.models import cifar_model_dict

    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": cifar_model_dict["wrn_16_2"][0](num_classes=10).state_dict()}, teacher_file)
    trainer = make_trainer(tmp_path, "DISTILLER.TYPE=KD", "DISTILLER.TEACHER=wrn_16_2",
                           f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", f"SOLVER.SKIP_NONFINITE={skip_nonfinite}")
    trainer.distiller.train()
    batches = [trainer.to_device(batch) for _, batch in zip(range(3), trainer.train_loader)]
    trainer.train_iter(*batches[0], epoch=1, step=0)  # builds the teacher's folded copy (reads once)
    for step, (image, target, extra) in enumerate(batches[1:], start=1):
        state = {k: v.clone() for k, v in trainer.distiller.state_dict().items()}
        with HostReads() as reads:
            statistics, values, total = trainer.train_iter(image, target, extra, epoch=1, step=step)
        assert reads.python == ["tolist"] and reads.scalars.count == 0
        # the numbers read equal the loss terms and accuracies computed apart on the same weights
        trainer.distiller.load_state_dict(state)
        with torch.no_grad():
            preds, losses = trainer.distiller(image=image, target=target, epoch=1, **extra)
        for name, value in losses.items():
            assert values[name] == pytest.approx(float(value), rel=1e-6, abs=1e-7), name
        assert total == pytest.approx(sum(values.values()), rel=1e-12)
        correct = (preds.argmax(1) == target).float().mean().item() * 100
        top5 = (preds.topk(5, 1).indices == target[:, None]).any(1).float().mean().item() * 100
        assert statistics == pytest.approx([correct, top5])


@pytest.mark.parametrize("fast_aug", [True, False])
def test_compiled_training_drops_the_last_partial_batch(fast_aug):
    """SOLVER.COMPILE: every training batch has SOLVER.BATCH_SIZE images (a smaller last one would
    compile the student again); validation still sees every image; without it nothing is dropped."""
    from mdistiller.dataset import get_dataset
    from mdistiller.engine.cfg import build_cfg

    opts = ["DATASET.TYPE=digits", "DATASET.IMAGE_SIZE=8", "SOLVER.BATCH_SIZE=100", f"DATASET.FAST_AUG={fast_aug}",
            "DATASET.NUM_WORKERS=0"]
    compiled, val_loader, num_data, _ = get_dataset(build_cfg(None, opts + ["SOLVER.COMPILE=True"]))
    eager, _, _, _ = get_dataset(build_cfg(None, opts))
    assert num_data % 100 != 0  # the digits set has a partial last batch to drop
    assert [len(batch[0]) for batch in compiled] == [100] * (num_data // 100)
    assert sum(len(batch[0]) for batch in eager) == num_data and len(eager) == num_data // 100 + 1
    assert sum(len(batch[0]) for batch in val_loader) == len(val_loader.dataset)


def test_student_is_compiled_after_the_ddp_wrap(tmp_path, monkeypatch):
    from mdistiller.engine import trainer as trainer_module

    order = []
    wrap = trainer_module.wrap_ddp
    monkeypatch.setattr(trainer_module, "wrap_ddp", lambda *args: order.append("wrap") or wrap(*args))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, *a, **k: order.append(type(module).__name__))
    trainer = make_trainer(tmp_path, "SOLVER.COMPILE=True")
    assert order == ["wrap", type(trainer.distiller.student).__name__]
