"""PSPNet and the mmsegmentation-layout heads (mdistiller_dense/pspnet.py): pyramid pooling against
a computation by hand, output stride 8, the auxiliary loss, gradients, mmsegmentation's module
names and the full-size parameter counts on the meta device."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dense_helpers import dense_cfg
from mdistiller.errors import ConfigError
from mdistiller_dense.build import build_dense_distiller
from mdistiller_dense.models import build_segmenter
from mdistiller_dense.pspnet import ASPPHead, FCNHead, PyramidPooling

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BN_EPS = 1e-5


def adaptive_average_pool(x: np.ndarray, bins: int) -> np.ndarray:
    """(C, H, W) -> (C, bins, bins): bin i covers [floor(i H / b), ceil((i + 1) H / b))."""
    c, h, w = x.shape
    out = np.zeros((c, bins, bins))
    for i in range(bins):
        for j in range(bins):
            rows = slice(math.floor(i * h / bins), math.ceil((i + 1) * h / bins))
            cols = slice(math.floor(j * w / bins), math.ceil((j + 1) * w / bins))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def bilinear_up(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners False): source = (dst + 0.5) * in / out - 0.5."""
    def taps(size_in, size_out):
        src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, size_in - 1), src - low

    r0, r1, rw = taps(x.shape[1], h)
    c0, c1, cw = taps(x.shape[2], w)
    rows = x[:, r0] * (1 - rw)[None, :, None] + x[:, r1] * rw[None, :, None]
    return rows[:, :, c0] * (1 - cw) + rows[:, :, c1] * cw


def test_pyramid_pooling_equals_pool_then_bilinear_by_hand():
    """Each branch with an identity 1x1 conv and fresh BatchNorm (eval): relu(pool_b(x) / sqrt(1 + eps)), upsampled."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 13))  # 13 columns: bins of 2, 3, 6 overlap unevenly
    ppm = PyramidPooling(2, 2).eval()
    for branch in ppm:
        branch[1].conv.weight.data = torch.eye(2).view(2, 2, 1, 1)
    with torch.no_grad():
        outs = ppm(torch.tensor(x, dtype=torch.float32)[None])
    assert [branch[0].output_size for branch in ppm] == [1, 2, 3, 6]
    for out, bins in zip(outs, (1, 2, 3, 6)):
        expected = bilinear_up(np.maximum(adaptive_average_pool(x, bins) / np.sqrt(1 + BN_EPS), 0), 12, 13)
        assert out.shape == (1, 2, 12, 13)
        np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def _conv_bn_relu(x, block, dilation=1):
    """A ConvBNReLU block in eval mode, by its weights: conv (padding keeps the size), BN with running stats, ReLU."""
    k = block.conv.weight.shape[-1]
    y = F.conv2d(x, block.conv.weight, padding=dilation * (k // 2), dilation=dilation)
    bn = block.bn
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    return torch.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])


def _randomise_bn(module):
    torch.manual_seed(1)
    for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    return module.eval()


def test_aspp_head_by_hand():
    """mmsegmentation's order: [image pool (broadcast mean), 1x1, 3x3 dilated 12 / 24 / 36] -> bottleneck -> conv_seg."""
    torch.manual_seed(0)
    head = _randomise_bn(ASPPHead(6, 4, 3))
    x = torch.randn(2, 6, 9, 10)
    with torch.no_grad():
        out = head(x)
        pooled = _conv_bn_relu(x.mean(dim=(2, 3), keepdim=True), head.image_pool[1]).expand(-1, -1, 9, 10)
        branches = [_conv_bn_relu(x, block, d) for block, d in zip(head.aspp_modules, (1, 12, 24, 36))]
        fused = _conv_bn_relu(torch.cat([pooled, *branches], dim=1), head.bottleneck)
        expected = F.conv2d(fused, head.conv_seg.weight, head.conv_seg.bias)
    assert out.shape == (2, 3, 9, 10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert [m.conv.dilation[0] for m in head.aspp_modules] == [1, 12, 24, 36]
    assert head.aspp_modules[0].conv.kernel_size == (1, 1) and head.bottleneck.conv.in_channels == 5 * 4


def test_fcn_head_by_hand():
    """mmsegmentation's FCNHead: two 3x3 convs, then conv_cat on [input, their output]; the aux form one conv."""
    torch.manual_seed(0)
    head = _randomise_bn(FCNHead(6, 4, 3))
    x = torch.randn(2, 6, 7, 8)
    with torch.no_grad():
        out = head(x)
        convs = _conv_bn_relu(_conv_bn_relu(x, head.convs[0]), head.convs[1])
        fused = _conv_bn_relu(torch.cat([x, convs], dim=1), head.conv_cat)
        expected = F.conv2d(fused, head.conv_seg.weight, head.conv_seg.bias)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    aux = FCNHead(6, 4, 3, num_convs=1, concat_input=False)
    assert len(aux.convs) == 1 and aux.conv_cat is None and aux(x).shape == (2, 3, 7, 8)


def _head_keys(prefix, blocks, with_bias=("conv_seg",)):
    keys = set()
    for block in blocks:
        keys.add(f"{prefix}.{block}.conv.weight")
        keys |= {f"{prefix}.{block}.bn.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                       "num_batches_tracked")}
    return keys | {f"{prefix}.{name}.{k}" for name in with_bias for k in ("weight", "bias")}


def test_head_names_are_mmsegmentations():
    """Keys written from mmsegmentation's PSPHead / ASPPHead / FCNHead, without decode_head. / auxiliary_head."""
    aux = _head_keys("aux_classifier", ["convs.0"])
    psp = build_segmenter("pspnet_resnet18", 3, aux_loss=True).state_dict()
    expected = _head_keys("classifier", [f"psp_modules.{i}.1" for i in range(4)] + ["bottleneck"]) | aux
    assert {k for k in psp if "classifier" in k} == expected
    aspp = build_segmenter("deeplabv3_resnet18", 3, aux_loss=True, head_layout="mmseg").state_dict()
    expected = _head_keys("classifier", ["image_pool.1"] + [f"aspp_modules.{i}" for i in range(4)] + ["bottleneck"])
    assert {k for k in aspp if "classifier" in k} == expected | aux
    fcn = build_segmenter("fcn_resnet18", 3, head_layout="mmseg").state_dict()
    assert {k for k in fcn if "classifier" in k} == _head_keys("classifier", ["convs.0", "convs.1", "conv_cat"])
    assert "classifier.0.weight" in build_segmenter("fcn_resnet18", 3).state_dict()  # torchvision's, the default
    with pytest.raises(ConfigError, match="SEG_HEAD_LAYOUT"):
        build_segmenter("fcn_resnet18", 3, head_layout="mmsegmentation")


def test_pspnet_output_stride_8_and_shapes():
    model = build_segmenter("pspnet_resnet18", 5, aux_loss=True).eval()
    x = torch.zeros(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    assert feats["out"].shape == (2, 512, 8, 12) and feats["aux"].shape == (2, 256, 8, 12)
    assert out["out"].shape == (2, 5, 64, 96) and out["aux"].shape == (2, 5, 64, 96)
    assert model.classifier.bottleneck.conv.in_channels == 512 + 4 * 128 and model.classifier.conv_seg.in_channels == 128
    assert model.aux_classifier.conv_seg.in_channels == 64
    assert isinstance(model.classifier.dropout, torch.nn.Dropout2d) and model.classifier.dropout.p == 0.1


def _psp_params(backbone: int, c4: int, width: int, aux_width: int, classes: int) -> int:
    """PSP head (4 bins of 1x1 conv + BN, 3x3 bottleneck + BN, conv_seg) + aux FCN head (3x3 + BN, conv_seg)."""
    psp = 4 * (c4 * width + 2 * width) + (c4 + 4 * width) * width * 9 + 2 * width + width * classes + classes
    aux = (c4 // 2) * aux_width * 9 + 2 * aux_width + aux_width * classes + classes
    return backbone + psp + aux


@pytest.mark.parametrize("depth,backbone,c4,width,aux_width", [
    (18, 11_689_512 - 513_000, 512, 128, 64),       # torchvision resnet18 minus its fc (512 x 1000 + 1000)
    (101, 44_549_160 - 2_049_000, 2048, 512, 256),  # resnet101 minus its fc (2048 x 1000 + 1000)
])
def test_full_size_pspnet_parameters_on_meta(depth, backbone, c4, width, aux_width):
    with torch.device("meta"):
        model = build_segmenter(f"pspnet_resnet{depth}", 19, aux_loss=True)
    assert sum(p.numel() for p in model.parameters()) == _psp_params(backbone, c4, width, aux_width, 19)
    assert model.backbone.layer4[0].conv2.dilation == ((2, 2) if depth == 101 else (4, 4))


def test_aux_loss_value_and_gradients(tmp_path):
    """loss_aux = AUX_WEIGHT x CE of the aux logits; loss_seg reaches the PSP head and the backbone but
    not the aux head, loss_aux reaches the aux head and layer3 but not layer4 or the PSP head."""
    cfg = dense_cfg(tmp_path, "NONE", "pspnet_resnet18", extra=["MODEL.AUX_LOSS", "True", "MODEL.AUX_WEIGHT", "0.25"])
    torch.manual_seed(0)
    distiller = build_dense_distiller(cfg, 4)
    student = distiller.student.eval()  # eval: no dropout, running BN stats, so the two forwards agree
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    target[0, :8] = 255
    _, losses = distiller.forward_train(images, target)
    with torch.no_grad():
        aux = student(images)["aux"]
    expected = 0.25 * F.cross_entropy(aux, target, ignore_index=255)
    torch.testing.assert_close(losses["loss_aux"], expected)
    assert set(losses) == {"loss_seg", "loss_aux"}

    def grads(loss):
        student.zero_grad()
        loss.backward(retain_graph=True)
        return {name for name, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    seg = grads(losses["loss_seg"])
    assert {f"classifier.psp_modules.{i}.1.conv.weight" for i in range(4)} <= seg
    assert "backbone.conv1.weight" in seg and not any(n.startswith("aux_classifier") for n in seg)
    aux_names = grads(losses["loss_aux"])
    assert "aux_classifier.convs.0.conv.weight" in aux_names and "backbone.layer3.0.conv1.weight" in aux_names
    assert not any(n.startswith(("classifier", "backbone.layer4")) for n in aux_names)


def test_pspnet_names():
    from mdistiller.errors import UnknownNameError
    from mdistiller_dense.models import parse_model_name, task_of

    assert parse_model_name("pspnet_resnet101") == ("pspnet", "resnet101") and task_of("pspnet_resnet34") == "segmentation"
    for bad in ("pspnet_resnet18_fpn", "pspnet_resnet152"):
        with pytest.raises(UnknownNameError, match="pspnet"):
            parse_model_name(bad)


@pytest.mark.slow
def test_bf16_autocast_step_on_a_distilled_pspnet(tmp_path):
    """CanKD PSPNet-R18 -> R18 with the auxiliary head under the trainer's bf16 autocast: the decode head
    runs in bf16, every loss is finite and within 5% of the fp32 step's, every student parameter gets a
    finite float32 gradient pointing as the fp32 one does."""
    from dense_helpers import save_teacher
    from mdistiller.engine.trainer import trainer_dict

    torch.manual_seed(1)
    image, target = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))

    def step(amp: bool):
        cfg = dense_cfg(tmp_path, "CANKD", "pspnet_resnet18", "pspnet_resnet18",
                        extra=["MODEL.AUX_LOSS", "True", "CANKD.LEVELS", "1", "SOLVER.AMP", str(amp),
                               "SOLVER.CHANNELS_LAST", "False"])
        save_teacher(cfg)
        torch.manual_seed(0)
        trainer = trainer_dict["dense"](f"amp_{amp}", build_dense_distiller(cfg, 4), None, None, cfg,
                                        run_dir=str(tmp_path / f"run_{amp}"))
        student = trainer.distiller.student
        dtypes = []
        handle = student.classifier.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
        trainer.distiller.train()
        torch.manual_seed(2)  # the same dropout masks in both steps
        with trainer.autocast():
            _, losses = trainer.train_model(image=image, target=target, epoch=1)
        handle.remove()
        sum(losses.values()).backward()
        grads = {name: p.grad for name, p in student.named_parameters()}
        return trainer.amp_dtype, dtypes[0], {k: float(v.detach()) for k, v in losses.items()}, grads

    amp_dtype, out_dtype, losses, grads = step(True)
    assert amp_dtype == torch.bfloat16 and out_dtype == torch.bfloat16
    _, fp32_dtype, reference, fp32_grads = step(False)
    assert fp32_dtype == torch.float32 and set(losses) == {"loss_seg", "loss_aux", "loss_kd"}
    for name, value in reference.items():
        assert math.isfinite(losses[name]) and losses[name] == pytest.approx(value, rel=0.05), name
    for name, grad in grads.items():
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
    flat = lambda g: torch.cat([t.flatten() for t in g.values()])  # noqa: E731
    assert F.cosine_similarity(flat(grads), flat(fp32_grads), dim=0) > 0.9  # 0.948 measured (bf16 through 18 layers)


MM_ARCH = {18: ("basic", (2, 2, 2, 2)), 101: ("bottleneck", (3, 4, 23, 3))}  # mmseg ResNet.arch_settings


def mm_resnet_v1c_params(depth: int, stem: int = 64) -> int:
    """mmsegmentation's ResNetV1c (mmseg/models/backbones/resnet.py) by its module definitions: the deep
    stem (3x3 convs 3 -> stem/2 -> stem/2 -> stem, each with BN), then per stage i (planes 64 * 2^i)
    BasicBlocks (3x3, 3x3) or Bottlenecks (1x1, 3x3, 1x1 to 4 planes), convs without bias, BN after each;
    a 1x1 conv + BN downsample on the first block of a stage whose input width differs from its output
    (every stage but a BasicBlock network's first; the same blocks as stride 2 would give); no fc."""
    kind, blocks = MM_ARCH[depth]
    total = 3 * (stem // 2) * 9 + (stem // 2) ** 2 * 9 + (stem // 2) * stem * 9 + 2 * (stem // 2 + stem // 2 + stem)
    inplanes = stem
    for i, count in enumerate(blocks):
        planes = 64 * 2 ** i
        out = planes if kind == "basic" else 4 * planes
        for b in range(count):
            width = inplanes if b == 0 else out
            if kind == "basic":
                total += width * planes * 9 + planes * planes * 9 + 4 * planes
            else:
                total += width * planes + planes * planes * 9 + planes * out + 2 * (planes + planes + out)
            if b == 0 and width != out:
                total += width * out + 2 * out
        inplanes = out
    return total


@pytest.mark.parametrize("depth,c4,width,aux_width", [(18, 512, 128, 64), (101, 2048, 512, 256)])
def test_full_size_pspnet_with_deep_stem_counts_as_mmsegmentations(depth, c4, width, aux_width):
    """mmsegmentation's pspnet_r18-d8 / pspnet_r101-d8 (Cityscapes, 19 classes): ResNetV1c + PSPHead
    (channels 128 / 512) + auxiliary FCNHead (64 / 256), as configs/pspnet/pspnet_r{18,50}-d8_*.py build
    them; ours with MODEL.DEEP_STEM and MODEL.AUX_LOSS on the meta device has the same count."""
    with torch.device("meta"):
        model = build_segmenter(f"pspnet_resnet{depth}", 19, aux_loss=True, deep_stem=True)
    mm = _psp_params(mm_resnet_v1c_params(depth), c4, width, aux_width, 19)
    assert sum(p.numel() for p in model.parameters()) == mm
