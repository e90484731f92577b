"""CanKD: the loss at initialisation, every affinity against a direct formula, gradients."""

import numpy as np
import pytest
import torch

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.errors import ConfigError
from mdistiller.losses.cankd import CrossAttentionNonLocal, instance_normalized_mse
from mdistiller.models import cifar_model_dict


def reference_in_mse(a: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> float:
    """Each (sample, channel) map standardised with its own mean and biased variance; MSE / 2."""
    def norm(x):
        mean = x.mean(axis=(2, 3), keepdims=True)
        var = x.var(axis=(2, 3), keepdims=True)
        return (x - mean) / np.sqrt(var + eps)
    return float(((norm(a) - norm(b)) ** 2).mean() / 2)


def build(opts, teacher="resnet32x4", student="resnet8x4", num_classes=10):
    cfg = build_cfg(None, ["DISTILLER.TYPE=CANKD", f"DISTILLER.TEACHER={teacher}", f"DISTILLER.STUDENT={student}",
                           "DATASET.IMAGE_SIZE=16", *opts])
    torch.manual_seed(0)
    s = cifar_model_dict[student][0](num_classes=num_classes)
    t = cifar_model_dict[teacher][0](num_classes=num_classes)
    return distiller_dict["CANKD"](s, t, cfg, num_data=10, num_classes=num_classes)


@pytest.mark.parametrize("affinity, student", [("dot_product", "resnet8"), ("gaussian", "resnet8x4"),
                                               ("embedded_gaussian", "resnet8x4")])
def test_loss_at_initialisation_is_instance_normalised_mse(affinity, student):
    teacher = "resnet8x4"
    distiller = build([f"CANKD.AFFINITY={affinity}"], teacher, student)
    distiller.train()
    image, target = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, losses = distiller(image=image, target=target, epoch=1)
    with torch.no_grad():
        s = distiller.student(image)[1]["feats"][-1]
        t = distiller.teacher(image)[1]["feats"][-1]
        s = distiller.connector(s)  # 1x1 conv to 256 channels for resnet8 (64), identity otherwise
    assert isinstance(distiller.connector, torch.nn.Conv2d) == (student == "resnet8")
    # W's BatchNorm starts at weight 0, bias 0, so z_s = s whatever the attention gives.
    expected = 5.0 * reference_in_mse(s.double().numpy(), t.double().numpy())
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-4)
    assert losses["loss_ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def maxpool2(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def conv1x1(conv: torch.nn.Conv2d, x: np.ndarray) -> np.ndarray:
    weight = conv.weight.detach().double().numpy()[:, :, 0, 0]
    return np.einsum("oc,bchw->bohw", weight, x) + conv.bias.detach().double().numpy()[None, :, None, None]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_block(block: CrossAttentionNonLocal, s: np.ndarray, t: np.ndarray, affinity: str, residual: bool):
    """z_s written position by position: f_ij from the affinity, y_i = sum_j f_ij g(t)_j, z = BN(conv(y)) (+ s)."""
    b, c, h, w = s.shape
    g = maxpool2(conv1x1(block.g, t)).reshape(b, block.inter_channels, -1)      # (B, C', N)
    if affinity == "gaussian":
        query, key = s.reshape(b, c, -1), maxpool2(t).reshape(b, c, -1)
    else:
        query = conv1x1(block.theta, s).reshape(b, block.inter_channels, -1)
        key = maxpool2(conv1x1(block.phi, t)).reshape(b, block.inter_channels, -1)
    n = key.shape[-1]
    f = np.zeros((b, h * w, n))
    for i in range(h * w):
        for j in range(n):
            f[:, i, j] = (query[:, :, i] * key[:, :, j]).sum(axis=1)
    f = f / n if affinity == "dot_product" else softmax(f)
    y = np.einsum("bij,bcj->bci", f, g).reshape(b, block.inter_channels, h, w)
    bn = block.W[1]  # eval mode: running statistics
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    shift = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * scale
    z = conv1x1(block.W[0], y) * scale[None, :, None, None] + shift[None, :, None, None]
    return z + s if residual else z


@pytest.mark.parametrize("affinity", ["dot_product", "gaussian", "embedded_gaussian"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("size", [(4, 4), (5, 4)])
def test_block_matches_direct_formula(affinity, residual, size):
    torch.manual_seed(1)
    block = CrossAttentionNonLocal(6, affinity=affinity, residual=residual).double()
    with torch.no_grad():  # a non-trivial W branch, BatchNorm in eval mode
        block.W[1].weight.normal_()
        block.W[1].bias.normal_()
        block.W[1].running_mean.normal_()
        block.W[1].running_var.uniform_(0.5, 2.0)
    block.eval()
    s, t = torch.randn(2, 6, *size, dtype=torch.float64), torch.randn(2, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        z = block(s, t)
    expected = reference_block(block, s.numpy(), t.numpy(), affinity, residual)
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-9, atol=1e-10)
    assert (block.theta is None) == (affinity == "gaussian")


def test_instance_normalized_mse_matches_numpy():
    a, b = torch.randn(3, 5, 4, 6, dtype=torch.float64), torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3 + 1
    assert instance_normalized_mse(a, b).item() == pytest.approx(reference_in_mse(a.numpy(), b.numpy()), rel=1e-10)


def test_gradients_reach_student_connector_and_block_only():
    distiller = build([], "resnet8x4", "wrn_16_2")
    with torch.no_grad():  # leave the zero start so theta / phi / g are on a non-zero gradient path
        distiller.can.W[1].weight.fill_(0.5)
    distiller.train()
    _, losses = distiller(image=torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)), epoch=1)
    sum(losses.values()).backward()
    for name, p in list(distiller.student.named_parameters()) + list(distiller.connector.named_parameters()) + \
            list(distiller.can.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    assert distiller.get_extra_parameters() == sum(p.numel() for m in (distiller.connector, distiller.can)
                                                   for p in m.parameters())


@pytest.mark.parametrize("opts, match", [(["CANKD.POOL_SIZE=8"], "POOL_SIZE 8"), (["CANKD.AFFINITY=cosine"], "AFFINITY")])
def test_config_errors(opts, match):
    with pytest.raises(ConfigError, match=match):
        build(opts)
