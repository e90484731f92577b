"""Loss values against independent computations written here (numpy, PyWavelets, formulas), for the
methods whose value no other test checks: CANKD with a non-zero W, FREEKD with RELATION on, AFPKD in
its default variant, and every dense distiller (NONE, CWD, PKD, MGD with a fixed mask, FGD's four
terms, CANKD, FREEKD). docs/methods/README.md lists, for every registered key, the test that checks
its value and against what."""

import numpy as np
import pytest
import pywt
import torch

from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import build_cfg
from mdistiller.models import cifar_model_dict
from prompt_files import write_prompt_file

pytestmark = [pytest.mark.usefixtures("torch_single_thread"),
              pytest.mark.filterwarnings("ignore:Level value of 3 is too high")]   # PyWavelets on 4x4 maps


# -- numpy building blocks ----------------------------------------------------------------------
def array(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def conv1x1(conv, x):
    out = np.einsum("oi,bihw->bohw", array(conv.weight)[:, :, 0, 0], x)
    return out if conv.bias is None else out + array(conv.bias)[None, :, None, None]


def conv3x3(conv, x):
    """3x3 convolution, stride 1, zero padding 1, as a sum over the nine offsets."""
    weight, (h, w) = array(conv.weight), x.shape[-2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(np.einsum("oi,bihw->bohw", weight[:, :, i, j], padded[:, :, i:i + h, j:j + w])
              for i in range(3) for j in range(3))
    return out + array(conv.bias)[None, :, None, None]


def batch_norm_train(x, bn):
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + bn.eps) * array(bn.weight)[None, :, None, None] \
        + array(bn.bias)[None, :, None, None]


def instance_norm(x, eps=1e-5):
    mean, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def maxpool2(x):
    b, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def bilinear(x, size):
    """PyTorch's bilinear resize with align_corners=False: source = (i + 0.5) * in / out - 0.5, >= 0."""
    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            m[i, i0] += 1 - (src - i0)
            m[i, i1] += src - i0
        return m
    return np.einsum("ih,bchw,jw->bcij", matrix(x.shape[2], size[0]), x, matrix(x.shape[3], size[1]))


def test_none_is_the_cross_entropy():
    cfg = build_cfg(None, ["DISTILLER.TYPE=NONE", "DATASET.IMAGE_SIZE=16"])
    torch.manual_seed(0)
    distiller = distiller_dict["NONE"](cifar_model_dict["resnet8"][0](num_classes=10), None, cfg).train()
    image, target = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 9, 3])
    logits, losses = distiller(image=image, target=target)
    log_p = np.log(softmax(array(logits)))
    assert set(losses) == {"loss_ce"}
    assert losses["loss_ce"].item() == pytest.approx(-log_p[np.arange(4), target.numpy()].mean(), rel=1e-6)


# -- CanKD ----------------------------------------------------------------------------------------
def cankd_block(block, s, t):
    """Dot-product CanKD block: f = theta(s)^T phi(pool t) / N, y = f g(pool t), z = BN(conv(y)) + s."""
    b, c, h, w = s.shape
    query = conv1x1(block.theta, s).reshape(b, -1, h * w)
    key = maxpool2(conv1x1(block.phi, t)).reshape(b, query.shape[1], -1)
    value = maxpool2(conv1x1(block.g, t)).reshape(b, query.shape[1], -1)
    f = np.einsum("bci,bcj->bij", query, key) / key.shape[-1]
    y = np.einsum("bij,bcj->bci", f, value).reshape(b, -1, h, w)
    return batch_norm_train(conv1x1(block.W[0], y), block.W[1]) + s


def cankd_value(block, s, t):
    return ((instance_norm(cankd_block(block, s, t)) - instance_norm(t)) ** 2).mean() / 2


def randomise_batch_norms(module, seed=1):
    """BatchNorm affine parameters away from their init (CanKD's W starts at 0, so a zero W hides the
    attention): weights in [0.5, 1.5], biases in [-0.5, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g))
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=g) - 0.5)


def test_cankd_classification_with_a_nonzero_w():
    cfg = build_cfg(None, ["DISTILLER.TYPE=CANKD", "DISTILLER.TEACHER=resnet8x4", "DISTILLER.STUDENT=resnet8",
                           "DATASET.IMAGE_SIZE=16", "CANKD.LOSS.FEAT_WEIGHT=3.0"])
    torch.manual_seed(0)
    distiller = distiller_dict["CANKD"](cifar_model_dict["resnet8"][0](num_classes=10),
                                        cifar_model_dict["resnet8x4"][0](num_classes=10), cfg).double().train()
    randomise_batch_norms(distiller.can)
    image, target = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    _, losses = distiller(image=image, target=target)
    with torch.no_grad():
        s = array(distiller.student(image)[1]["feats"][-1])   # 64 @ 4x4
        t = array(distiller.teacher(image)[1]["feats"][-1])   # 256 @ 4x4
    s = conv1x1(distiller.connector, s)
    block = distiller.can
    assert abs(cankd_block(block, s, t) - s).max() > 0.1      # W(y) is not zero: the attention counts
    assert losses["loss_kd"].item() == pytest.approx(3.0 * cankd_value(block, s, t), rel=1e-9)


# -- FreeKD / AFPKD: prompts, bands, relation weights ---------------------------------------------
def band_sets(x, levels=3):
    """[LL_L, (LH, HL, HH) of level 1 (finest), ..., level L] from PyWavelets, each detail set stacked
    as (B, C, 3, h, w)."""
    coeffs = pywt.wavedec2(x, "haar", mode="zero", level=levels, axes=(-2, -1))
    return [coeffs[0]] + [np.stack(detail, axis=2) for detail in reversed(coeffs[1:])]


def prompt_masks(tokens, bands):
    """M_k = sigmoid(P_k R_k): R_0 = LL, R_j = the three orientations of level j summed."""
    inputs = [bands[0]] + [band.sum(axis=2) for band in bands[1:]]
    return [sigmoid(np.einsum("tc,bchw->bthw", p, r)) for p, r in zip(tokens, inputs)]


def band_loss(masks, teacher_bands, student_bands, low_band, weights=None):
    """sum_k mean_{b,t,c,(o),h,w} w_{b,c} M_{b,t,h,w} |a - b|, over the high bands (+ LL with low_band)."""
    total = 0.0
    for k, (m, a, s) in enumerate(zip(masks, teacher_bands, student_bands)):
        if k == 0 and not low_band:
            continue
        diff = np.abs(a - s)
        if diff.ndim == 4:
            diff = diff[:, :, None]
        w = np.ones(diff.shape[:2]) if weights is None else weights
        total += (m[:, :, None, None] * (w[:, :, None, None, None] * diff)[:, None]).mean()
    return total


def channel_relation(relation, x, deeper):
    """sigmoid(gate(softmax(psi(deeper) x^T / sqrt(hw)))): psi a 1x1 conv of the deeper map resized to x."""
    b, c, h, w = x.shape
    if deeper.shape[-2:] != x.shape[-2:]:
        deeper = bilinear(deeper, (h, w))
    query = conv1x1(relation.psi, deeper).reshape(b, c, -1)
    rows = softmax(np.einsum("bcn,bdn->bcd", query, x.reshape(b, c, -1)) / np.sqrt(h * w))
    first, last = relation.gate[0], relation.gate[2]
    hidden = np.maximum(rows @ array(first.weight).T + array(first.bias), 0.0)
    return sigmoid(hidden @ array(last.weight).T + array(last.bias))[..., 0]


def relation_weights(distiller, teacher_maps, student_maps):
    """Per level w_t * w_s over the next deeper map (the deepest with itself), renormalised to mean 1."""
    weights = []
    for i, (rel_t, rel_s) in enumerate(zip(distiller.relation_t, distiller.relation_s)):
        deep = min(i + 1, len(teacher_maps) - 1)
        w = channel_relation(rel_t, teacher_maps[i], teacher_maps[deep]) * \
            channel_relation(rel_s, student_maps[i], student_maps[deep])
        weights.append(w / (w.mean(axis=1, keepdims=True) + 1e-12))
    return weights


def prompted_loss(distiller, teacher_maps, student_maps, low_band):
    weights = relation_weights(distiller, teacher_maps, student_maps)
    total = 0.0
    for prompt, t, s, w in zip(distiller.prompts, teacher_maps, student_maps, weights):
        t_bands, s_bands = band_sets(t), band_sets(s)
        total += band_loss(prompt_masks(array(prompt.tokens), t_bands), t_bands, s_bands, low_band, w)
    return total


def prompt_distiller(method, tmp_path, *opts):
    cfg = build_cfg(None, [f"DISTILLER.TYPE={method}", "DISTILLER.TEACHER=wrn_16_2", "DISTILLER.STUDENT=resnet8",
                           "DATASET.IMAGE_SIZE=16", f"LOG.PREFIX={tmp_path}", *opts])
    torch.manual_seed(0)
    student, teacher = cifar_model_dict["resnet8"][0](num_classes=10), cifar_model_dict["wrn_16_2"][0](num_classes=10)
    prompts = write_prompt_file(cfg, teacher)
    with torch.no_grad():   # prompts larger than their N(0, 0.01) init, so that the masks differ from 1/2
        for prompt in prompts:
            prompt.tokens.mul_(100.0)
    distiller = distiller_dict[method](student, teacher, cfg, num_data=10, num_classes=10)
    distiller.prompts.load_state_dict(prompts.state_dict())
    with torch.no_grad():   # relation gates far from their init, so that the channel weights spread out
        for relation in [*(distiller.relation_t or []), *(distiller.relation_s or [])]:
            relation.gate[0].weight.mul_(20.0)
            relation.gate[2].weight.mul_(20.0)
    return distiller.double().train()


def test_freekd_classification_with_relation_weights(tmp_path):
    # resnet8 -> wrn_16_2 at 16 px, last two stages: student 32@8x8, 64@4x4 (1x1 align convs to 64, 128);
    # teacher 64@8x8, 128@4x4; the 8x8 level's relation takes the 4x4 map bilinearly upsampled.
    distiller = prompt_distiller("FREEKD", tmp_path, "FREEKD.RELATION=True", "FREEKD.LOSS.FEAT_WEIGHT=2.0")
    image, target = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    _, losses = distiller(image=image, target=target)
    with torch.no_grad():
        fs, ft = distiller.student(image)[1]["feats"], distiller.teacher(image)[1]["feats"]
    teacher_maps = [array(ft[2]), array(ft[3])]
    student_maps = [conv1x1(align, array(fs[i])) for align, i in zip(distiller.align, (2, 3))]
    expected = 2.0 * prompted_loss(distiller, teacher_maps, student_maps, low_band=False)
    unweighted = 2.0 * sum(band_loss(prompt_masks(array(p.tokens), band_sets(t)), band_sets(t), band_sets(s), False)
                           for p, t, s in zip(distiller.prompts, teacher_maps, student_maps))
    assert abs(expected - unweighted) > 1e-4 * expected   # 100x the tolerance below: dropping the weights shows
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-6)   # the weights come in float32


def test_afpkd_default_variant(tmp_path):
    # Defaults: three stages, LL band, relation weights, ReviewKD fusion of the student's maps (the fused maps
    # are taken from `abfs`, ReviewKD's ABF, whose value tests/test_reviewkd.py checks).
    distiller = prompt_distiller("AFPKD", tmp_path, "AFPKD.WARMUP_EPOCHS=4", "AFPKD.LOSS.FEAT_WEIGHT=2.0")
    section = build_cfg(None, ["DISTILLER.TYPE=AFPKD"]).AFPKD
    assert (section.LOW_BAND, section.RELATION, section.FUSION, section.NUM_STAGES) == (True, True, True, 3)
    image, target = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    _, losses = distiller(image=image, target=target, epoch=2)
    with torch.no_grad():
        fs, ft = distiller.student(image)[1]["feats"], distiller.teacher(image)[1]["feats"]
        fused = [array(m) for m in distiller.abfs([fs[1], fs[2], fs[3]])]
    teacher_maps = [array(ft[i]) for i in (1, 2, 3)]
    expected = 2.0 * 0.5 * prompted_loss(distiller, teacher_maps, fused, low_band=True)
    assert losses["loss_kd"].item() == pytest.approx(expected, rel=1e-6)   # the relation weights come in float32


# -- dense distillers: the losses of `distill` on given FPN-shaped levels ---------------------------
from dense_helpers import dense_cfg, save_initial_prompts, save_teacher  # noqa: E402
from mdistiller_dense.build import build_dense_distiller  # noqa: E402
from mdistiller_dense.distillers import DenseBatch  # noqa: E402

LEVEL_SIZES = [8, 4, 2, 1, 1]   # FCOS FPN levels '0', '1', '2', 'p6', 'p7' of a 64 px batch, 256 channels


def dense_distiller(tmp_path, method, *extra, dtype=torch.float64):
    cfg = dense_cfg(tmp_path, method, extra=list(extra))
    save_teacher(cfg)
    torch.manual_seed(0)
    return build_dense_distiller(cfg, num_classes=4).to(dtype).train()


def fpn_levels(seed, batch=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 256, s, s, generator=g, dtype=dtype) for s in LEVEL_SIZES]


def test_dense_cwd_value(tmp_path):
    distiller = dense_distiller(tmp_path, "CWD", "CWD.TEMPERATURE", "2.0", "CWD.LEVELS", "3")
    s_levels, t_levels = fpn_levels(0), fpn_levels(1)
    loss = distiller.distill(s_levels, t_levels, DenseBatch(torch.zeros(2, 3, 64, 64)))["loss_kd"]
    expected = 0.0
    for s, t in zip(s_levels[:3], t_levels[:3]):   # T^2 sum_{n,c} KL(softmax_hw(t/T) || softmax_hw(s/T)) / (N C)
        n, c = s.shape[:2]
        p_s, p_t = softmax(array(s).reshape(n, c, -1) / 2.0), softmax(array(t).reshape(n, c, -1) / 2.0)
        expected += 4.0 * (p_t * (np.log(p_t) - np.log(p_s))).sum() / (n * c)
    assert loss.item() == pytest.approx(10.0 * expected, rel=1e-6)   # the softmaxes run in float32


def test_dense_pkd_value(tmp_path):
    distiller = dense_distiller(tmp_path, "PKD")
    s_levels, t_levels = fpn_levels(0), fpn_levels(1)
    loss = distiller.distill(s_levels, t_levels, DenseBatch(torch.zeros(2, 3, 64, 64)))["loss_kd"]

    def standardised(x):   # per channel over (N, H, W), unbiased std, eps added to the std
        flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
        return (flat - flat.mean(axis=1, keepdims=True)) / (flat.std(axis=1, ddof=1, keepdims=True) + 1e-6)

    expected = sum(((standardised(array(s)) - standardised(array(t))) ** 2).mean() / 2
                   for s, t in zip(s_levels[:4], t_levels[:4]))
    assert loss.item() == pytest.approx(6.0 * expected, rel=1e-6)   # the standardisation runs in float32


def test_dense_mgd_value_with_a_fixed_mask(tmp_path, monkeypatch):
    import mdistiller_dense.distillers.mgd as dense_mgd

    distiller = dense_distiller(tmp_path, "MGD", "MGD.ALPHA", "0.5")
    g = torch.Generator().manual_seed(2)
    masks = [(torch.rand(2, 1, s, s, generator=g) > 0.65).double() for s in LEVEL_SIZES]
    drawn = iter(masks)
    monkeypatch.setattr(dense_mgd, "random_keep_mask", lambda s, ratio: next(drawn))
    s_levels, t_levels = fpn_levels(0), fpn_levels(1)
    loss = distiller.distill(s_levels, t_levels, DenseBatch(torch.zeros(2, 3, 64, 64)))["loss_kd"]
    expected = 0.0
    for generator, s, t, m in zip(distiller.generators, s_levels, t_levels, masks):   # sum (G(M s) - t)^2 / N
        conv_a, conv_b = generator.generation[0], generator.generation[2]
        rebuilt = conv3x3(conv_b, np.maximum(conv3x3(conv_a, array(s) * array(m)), 0.0))
        expected += ((rebuilt - array(t)) ** 2).sum() / s.shape[0]
    assert loss.item() == pytest.approx(0.5 * expected, rel=1e-6)   # the squared error is summed in float32


def fgd_masks_by_hand(boxes, image_size, size):
    """Foreground 1 / (box area in cells) (the largest where boxes overlap), background 1 - [fg > 0]
    normalised to sum 1; a box covers rows floor(y0 h / H)..ceil(y1 h / H), ends included."""
    fg = np.zeros((len(boxes), size, size))
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            c0, c1 = int(np.floor(x0 / image_size * size)), int(np.ceil(x1 / image_size * size))
            r0, r1 = int(np.floor(y0 / image_size * size)), int(np.ceil(y1 / image_size * size))
            area = 1.0 / ((r1 + 1 - r0) * (c1 + 1 - c0))
            fg[i, r0:r1 + 1, c0:c1 + 1] = np.maximum(fg[i, r0:r1 + 1, c0:c1 + 1], area)
    bg = (fg <= 0).astype(float)
    return fg, bg / np.maximum(bg.sum(axis=(1, 2), keepdims=True), 1.0)


def global_context(block, x):
    """GcBlock: x + conv(ReLU(LayerNorm(conv(sum_j softmax_j(W_k x)_j x_j))))."""
    n, c = x.shape[:2]
    weights = softmax(conv1x1(block.conv_mask, x).reshape(n, -1))
    context = np.einsum("bcj,bj->bc", x.reshape(n, c, -1), weights)[:, :, None, None]
    hidden = conv1x1(block.channel_add_conv[0], context)
    norm = block.channel_add_conv[1]
    mean, var = hidden.mean(axis=(1, 2, 3), keepdims=True), hidden.var(axis=(1, 2, 3), keepdims=True)
    hidden = (hidden - mean) / np.sqrt(var + norm.eps) * array(norm.weight)[None] + array(norm.bias)[None]
    return x + conv1x1(block.channel_add_conv[3], np.maximum(hidden, 0.0))


def test_dense_fgd_value_of_all_four_terms(tmp_path):
    distiller = dense_distiller(tmp_path, "FGD", "FGD.LEVELS", "3", dtype=torch.float32)   # FGD computes in float32
    with torch.no_grad():   # the global blocks' last conv starts at zero: give it values
        for conv in [m.channel_add_conv[3] for loss in distiller.fgd for m in (loss.context_s, loss.context_t)]:
            conv.weight.normal_(0.0, 0.1)
    boxes = [[(4.0, 6.0, 30.0, 40.0), (20.0, 20.0, 60.0, 50.0)], [(10.0, 0.0, 63.0, 25.0)]]
    batch = DenseBatch(torch.zeros(2, 3, 64, 64), [{"boxes": torch.tensor(b)} for b in boxes], [(64, 64)] * 2)
    s_levels, t_levels = fpn_levels(0, dtype=torch.float32), fpn_levels(1, dtype=torch.float32)
    loss = distiller.distill(s_levels, t_levels, batch)["loss_kd"]
    expected, temperature = 0.0, 0.5
    for fgd, s, t in zip(distiller.fgd, s_levels[:3], t_levels[:3]):
        s, t = array(s), array(t)
        n, c, h, w = s.shape
        fg, bg = fgd_masks_by_hand(boxes, 64, h)

        def attention(x):
            spatial = h * w * softmax(np.abs(x).mean(axis=1).reshape(n, -1) / temperature).reshape(n, h, w)
            return spatial, c * softmax(np.abs(x).mean(axis=(2, 3)) / temperature)

        spatial_t, channel_t = attention(t)
        spatial_s, channel_s = attention(s)
        weighted = spatial_t[:, None] * channel_t[:, :, None, None] * (t - s) ** 2
        focal = (1e-3 * (weighted * fg[:, None]).sum() + 5e-4 * (weighted * bg[:, None]).sum()) / n
        attention_term = 5e-4 * (np.abs(channel_s - channel_t).sum() + np.abs(spatial_s - spatial_t).sum()) / n
        relation = 5e-6 * ((global_context(fgd.context_s, s) - global_context(fgd.context_t, t)) ** 2).sum() / n
        assert relation > 1e-3 * (focal + attention_term) and focal > 0 and attention_term > 0
        expected += focal + attention_term + relation
    assert loss.item() == pytest.approx(expected, rel=1e-5)   # float32 throughout


def test_dense_cankd_value(tmp_path):
    distiller = dense_distiller(tmp_path, "CANKD", "CANKD.LEVELS", "3")
    randomise_batch_norms(distiller.blocks)
    s_levels, t_levels = fpn_levels(0), fpn_levels(1)
    loss = distiller.distill(s_levels, t_levels, DenseBatch(torch.zeros(2, 3, 64, 64)))["loss_kd"]
    assert all(isinstance(align, torch.nn.Identity) for align in distiller.align)   # 256 -> 256
    expected = sum(cankd_value(block, array(s), array(t))
                   for block, s, t in zip(distiller.blocks, s_levels[:3], t_levels[:3]))
    assert loss.item() == pytest.approx(5.0 * expected, rel=1e-9)


def test_dense_none_is_the_task_loss(tmp_path):
    from mdistiller_dense.data import build_dense_datasets, detection_collate

    cfg = dense_cfg(tmp_path, "NONE")
    train, _, num_classes = build_dense_datasets(cfg)
    images, targets = detection_collate([train[0], train[1]])
    torch.manual_seed(0)
    distiller = build_dense_distiller(cfg, num_classes).train()
    _, losses = distiller(image=images, target=targets)
    direct = distiller.student(images, targets)   # torchvision's FCOS losses, called without the distiller
    assert {f"loss_{k}" for k in direct} == set(losses)
    for name, value in direct.items():
        assert losses[f"loss_{name}"].item() == pytest.approx(value.item(), rel=1e-6)

    cfg = dense_cfg(tmp_path, "NONE", "fcn_resnet18", "fcn_resnet18")
    train, _, num_classes = build_dense_datasets(cfg)
    images, labels = torch.stack([train[0][0], train[1][0]]), torch.stack([train[0][1], train[1][1]])
    labels[0, :4] = 255   # ignored pixels
    torch.manual_seed(0)
    distiller = build_dense_distiller(cfg, num_classes).train()
    torch.manual_seed(1)   # the FCN head's dropout draws the same mask in both forwards
    _, losses = distiller(image=images, target=labels)
    with torch.no_grad():
        torch.manual_seed(1)
        logits = array(distiller.student(images)["out"]).transpose(0, 2, 3, 1).reshape(-1, num_classes)
    flat = labels.numpy().reshape(-1)
    kept = flat != 255
    log_p = np.log(softmax(logits[kept]))
    expected = -log_p[np.arange(kept.sum()), flat[kept]].mean()
    assert set(losses) == {"loss_seg"} and losses["loss_seg"].item() == pytest.approx(expected, rel=1e-5)


def test_dense_freekd_value_of_its_three_terms(tmp_path):
    from mdistiller_dense.data import build_dense_datasets, detection_collate

    cfg = dense_cfg(tmp_path, "FREEKD", extra=["FREEKD.WEIGHT", "2.0", "FREEKD.FEAT_WEIGHT", "3.0",
                                               "FREEKD.REG_WEIGHT", "0.5"])
    train, _, num_classes = build_dense_datasets(cfg)
    images, targets = detection_collate([train[0], train[1]])
    teacher = save_teacher(cfg, num_classes)
    torch.manual_seed(3)
    save_initial_prompts(cfg, teacher, [256] * 5, list(range(5)))
    torch.manual_seed(0)
    distiller = build_dense_distiller(cfg, num_classes).train()
    with torch.no_grad():   # prompts away from their N(0, 0.01) init, so that the masks differ from 1/2
        for prompt in distiller.prompts:
            prompt.tokens.mul_(100.0)
    assert all(isinstance(align, torch.nn.Conv2d) for align in distiller.align)   # 256 -> 256, aligned anyway
    seen = {}
    distiller.student.backbone.register_forward_hook(
        lambda module, args, out: seen.update(tensor=args[0], student=list(out.values())))
    _, losses = distiller(image=images, target=targets)
    with torch.no_grad():
        teacher_levels = list(distiller.teacher.backbone(seen["tensor"]).values())

        def regression(head, level):   # one level through the regression head alone (FCOS: deltas, centerness)
            return array(head.regression_head([level])[0])

        reg = sum(np.where(np.abs(d) < 1.0, 0.5 * d ** 2, np.abs(d) - 0.5).mean()     # smooth-L1, beta 1
                  for d in (regression(distiller.student.head, s) - regression(distiller.teacher.head, t)
                            for s, t in zip(seen["student"], teacher_levels)))
    students = [conv1x1(align, array(s)) for align, s in zip(distiller.align, seen["student"])]
    teachers = [array(t) for t in teacher_levels]
    band = sum(band_loss(prompt_masks(array(p.tokens), band_sets(t)), band_sets(t), band_sets(s), False)
               for p, t, s in zip(distiller.prompts, teachers, students))
    feat = sum(((s - t) ** 2).mean() for s, t in zip(students, teachers))
    assert losses["loss_kd"].item() == pytest.approx(2.0 * band, rel=1e-5)
    assert losses["loss_feat"].item() == pytest.approx(3.0 * feat, rel=1e-5)
    assert losses["loss_reg"].item() == pytest.approx(0.5 * reg, rel=1e-5)
