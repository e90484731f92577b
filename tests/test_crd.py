"""CRD: the NCE loss and memory banks by hand on a tiny bank, the alias sampler, the instance
sampling modes, the distiller's step and MDistiller's state-dict names."""

import math

import numpy as np
import pytest
import torch

from distiller_step import build, train_step
from mdistiller.dataset import ContrastiveInstanceDataset, get_dataset
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.losses.crd import AliasSampler, ContrastMemory, Embed, contrast_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def unit(*v):
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_contrast_memory_and_nce_by_hand():
    """Bank of 4 items in 2-d, K = 2, T = 0.5, momentum 0.5, batch of 2."""
    num_data, T, m = 4, 0.5, 0.5
    mem1 = np.stack([unit(1, 0), unit(0, 1), unit(1, 1), unit(1, -1)])
    mem2 = np.stack([unit(0, 1), unit(1, 0), unit(-1, 1), unit(2, 1)])
    memory = ContrastMemory(2, num_data, k=2, temperature=T, momentum=m)
    memory.memory_v1.copy_(torch.from_numpy(mem1))
    memory.memory_v2.copy_(torch.from_numpy(mem2))
    v1 = np.stack([unit(3, 4), unit(1, 2)])      # student embeddings
    v2 = np.stack([unit(-1, 2), unit(5, 1)])     # teacher embeddings
    index = torch.tensor([0, 2])
    cidx = torch.tensor([[0, 1, 3], [2, 1, 0]])
    out_v1, out_v2 = memory(torch.from_numpy(v1).float(), torch.from_numpy(v2).float(), index, cidx)

    # student embeddings against the teacher bank, teacher embeddings against the student bank
    s1 = np.exp(np.einsum("bkd,bd->bk", mem2[cidx.numpy()], v1) / T)
    s2 = np.exp(np.einsum("bkd,bd->bk", mem1[cidx.numpy()], v2) / T)
    z1, z2 = s1.mean() * num_data, s2.mean() * num_data
    np.testing.assert_allclose(out_v1.numpy(), s1 / z1, rtol=1e-5)
    np.testing.assert_allclose(out_v2.numpy(), s2 / z2, rtol=1e-5)
    assert memory.params[2].item() == pytest.approx(z1, rel=1e-5)

    def nce(p):
        noise = 2 / num_data
        return -(np.log(p[:, 0] / (p[:, 0] + noise + 1e-7)).sum()
                 + np.log(noise / (p[:, 1:] + noise + 1e-7)).sum()) / p.shape[0]

    assert contrast_loss(out_v1, num_data).item() == pytest.approx(nce(s1 / z1), rel=1e-5)

    # momentum update of the rows of the batch, renormalised; other rows untouched
    new1 = 0.5 * mem1[[0, 2]] + 0.5 * v1
    new1 /= np.linalg.norm(new1, axis=1, keepdims=True)
    np.testing.assert_allclose(memory.memory_v1[[0, 2]].numpy(), new1, rtol=1e-5)
    np.testing.assert_allclose(memory.memory_v1[[1, 3]].numpy(), mem1[[1, 3]], rtol=1e-6)
    new2 = 0.5 * mem2[[0, 2]] + 0.5 * v2
    np.testing.assert_allclose(memory.memory_v2[[0, 2]].numpy(), new2 / np.linalg.norm(new2, axis=1, keepdims=True),
                               rtol=1e-5)

    # Z is fixed by the first batch
    memory(torch.from_numpy(v1).float(), torch.from_numpy(v2).float(), index, cidx)
    assert memory.params[2].item() == pytest.approx(z1, rel=1e-5)


def test_contrast_memory_normalisers_follow_loaded_state():
    """A resumed bank divides by the Z it was saved with; a state dict saved before the first step
    (Z unset, -1) loaded into a memory that has already run makes it measure Z again."""
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    index, cidx = torch.tensor([0, 1, 2]), torch.tensor([[0, 3, 4], [1, 4, 5], [2, 5, 6]])
    fresh = ContrastMemory(8, num_data=10, k=2).state_dict()
    memory = ContrastMemory(8, num_data=10, k=2)
    memory.load_state_dict(fresh)
    memory.params[2:4] = torch.tensor([3.0, 5.0])
    scores = memory.memory_v2[cidx] @ v.unsqueeze(2)
    resumed = ContrastMemory(8, num_data=10, k=2)
    resumed.load_state_dict(memory.state_dict())
    out_v1, _ = resumed(v, v, index, cidx)
    torch.testing.assert_close(out_v1, torch.exp(scores.squeeze(2) / 0.07) / 3.0)
    resumed.load_state_dict(fresh)
    out_v1, _ = resumed(v, v, index, cidx)
    expected = torch.exp((fresh["memory_v2"][cidx] @ v.unsqueeze(2)).squeeze(2) / 0.07)
    torch.testing.assert_close(resumed.params[2], expected.mean() * 10)
    torch.testing.assert_close(out_v1, expected / (expected.mean() * 10))


def test_contrast_memory_draws_negatives_without_contrast_index():
    torch.manual_seed(0)
    memory = ContrastMemory(8, num_data=50, k=6)
    v = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    out_v1, out_v2 = memory(v, v, torch.tensor([4, 9, 11]))
    assert out_v1.shape == out_v2.shape == (3, 7)
    assert set(memory.state_dict()) == {"params", "memory_v1", "memory_v2"}


def test_embed_is_unit_norm():
    embed = Embed(12, 5)
    out = embed(torch.randn(4, 12, 1, 1))
    assert out.shape == (4, 5)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-6)


def test_alias_sampler_frequencies_and_buffers():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    sampler = AliasSampler(probs)
    torch.manual_seed(0)
    draws = sampler.draw(200_000)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert torch.allclose(freq, probs.double(), atol=0.005)
    assert sampler.state_dict() == {} and len(list(sampler.buffers())) == 2
    assert draws.device == sampler.prob.device


class LabelledItems(torch.utils.data.Dataset):
    """Items (index, label) with the given labels."""

    def __init__(self, labels):
        self.targets = list(labels)
        self.classes = sorted(set(labels))

    def __getitem__(self, i):
        return i, self.targets[i]

    def __len__(self):
        return len(self.targets)


LABELS = [0] * 5 + [1] * 7 + [2] * 3 + [3] * 9   # 24 items, shuffled below
ORDER = np.random.default_rng(0).permutation(len(LABELS))
SHUFFLED = [LABELS[i] for i in ORDER]


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_sampling_modes(mode):
    torch.manual_seed(0)
    data = ContrastiveInstanceDataset(LabelledItems(SHUFFLED), k=10, mode=mode)
    positives_not_self = 0
    for index in range(len(data)):
        for _ in range(5):
            image, target, idx, sample = data[index]
            assert (image, target, idx) == (index, SHUFFLED[index], index)
            assert sample.dtype == torch.long and sample.shape == (11,)
            negatives = sample[1:].tolist()
            assert all(SHUFFLED[j] != target for j in negatives)
            pool = sum(label != target for label in SHUFFLED)
            if pool >= 10:
                assert len(set(negatives)) == 10    # without replacement when the pool is big enough
            positive = int(sample[0])
            if mode == "exact":
                assert positive == index
            else:
                assert SHUFFLED[positive] == target
                positives_not_self += positive != index
    if mode == "relax":
        assert positives_not_self > 0


def test_sampling_with_replacement_and_all_negatives_reachable():
    torch.manual_seed(0)
    data = ContrastiveInstanceDataset(LabelledItems(SHUFFLED), k=40)   # class 0 has 19 negatives < 40
    anchor = SHUFFLED.index(0)
    seen = set()
    for _ in range(20):
        negatives = data[anchor][3][1:].tolist()
        assert len(negatives) == 40 and all(SHUFFLED[j] != 0 for j in negatives)
        seen.update(negatives)
    assert seen == {j for j, label in enumerate(SHUFFLED) if label != 0}
    always = ContrastiveInstanceDataset(LabelledItems(SHUFFLED), k=15, always_replace=True)
    assert any(len(set(always[anchor][3][1:].tolist())) < 15 for _ in range(20))


def test_sampling_percent_restricts_negatives_to_a_fixed_subset():
    torch.manual_seed(0)
    data = ContrastiveInstanceDataset(LabelledItems(SHUFFLED), k=4, percent=0.5)
    size = int((len(SHUFFLED) - 5) * 0.5)
    for label in range(4):
        anchor = SHUFFLED.index(label)
        seen = set()
        for _ in range(60):
            seen.update(data[anchor][3][1:].tolist())
        assert len(seen) <= size and all(SHUFFLED[j] != label for j in seen)


def test_sampling_rejects_bad_settings():
    with pytest.raises(ConfigError, match="CRD.MODE"):
        ContrastiveInstanceDataset(LabelledItems(SHUFFLED), k=4, mode="loose")
    with pytest.raises(ValueError, match="two classes"):
        ContrastiveInstanceDataset(LabelledItems([1, 1, 1]), k=2)


def test_get_dataset_samples_for_crd_on_digits():
    cfg = build_cfg(None, ["DATASET.TYPE=digits", "DATASET.IMAGE_SIZE=8", "DISTILLER.TYPE=CRD", "CRD.NCE.K=32",
                           "CRD.MODE=relax", "SOLVER.BATCH_SIZE=16", "DATASET.NUM_WORKERS=0"])
    train_loader, val_loader, num_data, num_classes = get_dataset(cfg)
    image, target, index, cidx = next(iter(train_loader))
    labels = torch.tensor(train_loader.dataset.targets)
    assert cidx.shape == (16, 33) and num_data == len(labels)
    assert torch.equal(labels[index], target)
    assert torch.equal(labels[cidx[:, 0]], target)
    assert (labels[cidx[:, 1:]] != target[:, None]).all()
    assert len(next(iter(val_loader))) == 2


def test_crd_distiller_step_state_dict_and_extra_parameters():
    distiller, cfg = build("CRD", ["CRD.NCE.K=8"], num_data=20)
    assert (distiller.embed_s.linear.in_features, distiller.embed_t.linear.in_features) == (64, 128)
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    index = torch.tensor([3, 7, 11, 19])
    cidx = torch.cat([index[:, None], torch.randint(0, 20, (4, 8))], dim=1)
    before = distiller.contrast.memory_v1.clone()
    train_step(distiller, dict(image=image, target=target, epoch=1, index=index, contrastive_index=cidx))
    changed = (distiller.contrast.memory_v1 != before).any(dim=1)
    assert changed[index].all() and changed.sum() == 4
    extra = {k for k in distiller.state_dict() if not k.startswith(("student.", "teacher."))}
    assert extra == {"embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias",
                     "contrast.params", "contrast.memory_v1", "contrast.memory_v2"}
    embeds = (64 * 128 + 128) + (128 * 128 + 128)
    assert distiller.get_extra_parameters() == embeds + 5 + 2 * 20 * 128


def test_crd_measured_dims_must_agree_with_config():
    build("CRD", ["CRD.FEAT.STUDENT_DIM=64", "CRD.FEAT.TEACHER_DIM=128"])  # the true values are fine
    with pytest.raises(ConfigError, match=r"CRD.FEAT.STUDENT_DIM is 100 .* give 64"):
        build("CRD", ["CRD.FEAT.STUDENT_DIM=100"])


def test_crd_loss_matches_parts():
    """The distiller's loss is FEAT_WEIGHT times the two NCE terms of its own memory outputs."""
    distiller, _ = build("CRD", ["CRD.NCE.K=5", "CRD.LOSS.FEAT_WEIGHT=0.5"], num_data=12)
    distiller.train()
    image, target, index = torch.randn(3, 3, 16, 16), torch.randint(0, 10, (3,)), torch.tensor([0, 5, 9])
    cidx = torch.cat([index[:, None], torch.tensor([[1, 2, 3, 4, 6]] * 3)], dim=1)
    memory = ContrastMemory(128, 12, 5)
    memory.load_state_dict(distiller.contrast.state_dict())
    with torch.no_grad():
        _, fs = distiller.student(image)
        _, ft = distiller.teacher(image)
        out_s, out_t = memory(distiller.embed_s(fs["pooled_feat"]), distiller.embed_t(ft["pooled_feat"]), index, cidx)
        _, losses = distiller(image=image, target=target, epoch=1, index=index, contrastive_index=cidx)
    want = 0.5 * (contrast_loss(out_s, 12) + contrast_loss(out_t, 12)).item()
    assert losses["loss_kd"].item() == pytest.approx(want, rel=1e-5)
    assert math.isfinite(want)
