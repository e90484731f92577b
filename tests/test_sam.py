"""Segment Anything models, SA-1B data, SAM's loss, prompts and the teacher-embedding store
(mdistiller_dense/sam/, mdistiller_dense/data/sa1b.py, mdistiller/losses/sam.py)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REPO_ROOT
from mdistiller.losses.sam import sam_mask_loss
from mdistiller_dense.data.sa1b import SA1BFolder, sam_collate
from mdistiller_dense.sam.embeddings import EmbeddingStore, store_digest
from mdistiller_dense.sam.models import build_sam_model, encoder_parameters, sam_state_dict
from mdistiller_dense.sam.prompts import center_points, noisy_boxes, random_points

MOBILE_SAM_KEYS = os.path.join(REPO_ROOT, "tests", "fixtures", "mobile_sam_vit_t_keys.json")


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.slow
def test_full_size_models_build_on_the_meta_device_with_the_papers_parameter_counts():
    """SAM's FAQ (segment-anything.com): ViT-H image encoder 632M, prompt encoder + mask decoder 4M;
    MobileSAM's TinyViT encoder 5.78M (the paper, as quoted by vitavision.dev; its README rounds to 5M)."""
    with torch.device("meta"):
        teacher = build_sam_model("sam_vit_h")
        student = build_sam_model("sam_tinyvit_5m")
    assert encoder_parameters(teacher) / 1e6 == pytest.approx(632, rel=0.01)
    assert encoder_parameters(student) / 1e6 == pytest.approx(5.78, rel=0.01)
    decoder = millions(teacher.prompt_encoder) + millions(teacher.mask_decoder)
    assert decoder == pytest.approx(4.0, rel=0.02)
    assert millions(student.mask_decoder) == millions(teacher.mask_decoder)


@pytest.mark.slow
def test_mobile_sam_checkpoint_keys_load_into_sam_tinyvit_5m():
    """A state dict with every key and shape of MobileSAM's ``build_sam_vit_t`` (written from its module
    definitions, tests/fixtures) loads strictly, each tensor where MobileSAM's module puts it."""
    with open(MOBILE_SAM_KEYS) as f:
        shapes = json.load(f)
    torch.manual_seed(0)
    state = {k: torch.randn(s) if s else torch.tensor(3) for k, s in shapes.items()}
    model = build_sam_model("sam_tinyvit_5m", 128)
    model.load_state_dict(sam_state_dict(state))
    encoder = model.image_encoder
    assert torch.equal(encoder.patch_embed.conv2.bn.running_var, state["image_encoder.patch_embed.seq.2.bn.running_var"])
    # MobileSAM's layer 2 ends with the 160 -> 320 merging; timm's stage 3 starts with it
    assert torch.equal(encoder.stages[3].downsample.conv2.conv.weight,
                       state["image_encoder.layers.2.downsample.conv2.c.weight"])
    assert torch.equal(encoder.stages[2].blocks[5].attn.attention_biases,
                       state["image_encoder.layers.2.blocks.5.attn.attention_biases"])
    assert torch.equal(encoder.neck[3].weight, state["image_encoder.neck.3.weight"])
    assert torch.equal(model.mask_decoder.iou_prediction_head.layers[2].bias,
                       state["mask_decoder.iou_prediction_head.layers.2.bias"])
    dropped = [k for k in shapes if k.startswith(("image_encoder.norm_head.", "image_encoder.head."))]
    assert len(model.state_dict()) == len(shapes) - len(dropped) and dropped
    assert encoder.stages[3].downsample.conv2.conv.stride == (1, 1)  # MobileSAM keeps 1/16 in the last merging
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 256, 8, 8)
        mini = build_sam_model("sam_vit_mini", 128)
        assert mini.image_encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 256, 8, 8)


def write_sa1b_image(folder, image_id: int, image: np.ndarray, masks) -> None:
    from pycocotools import mask as mask_utils

    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, f"sa_{image_id}.jpg"), quality=100)
    anns = []
    for k, mask in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ys, xs = np.nonzero(mask)
        anns.append({"id": k, "area": int(mask.sum()), "segmentation": {"size": rle["size"],
                     "counts": rle["counts"].decode()},
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    record = {"image": {"image_id": image_id, "width": image.shape[1], "height": image.shape[0],
                        "file_name": f"sa_{image_id}.jpg"}, "annotations": anns}
    with open(os.path.join(folder, f"sa_{image_id}.json"), "w") as f:
        json.dump(record, f)


def test_sa1b_reader_resizes_the_longest_side_pads_and_decodes_the_rle_masks(tmp_path):
    image = np.full((40, 80, 3), 200, dtype=np.uint8)
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:20, 20:60] = True  # x 20..60, y 10..20
    write_sa1b_image(tmp_path / "sa_000000", 1, image, [mask, ~mask])
    write_sa1b_image(tmp_path / "sa_000001", 2, image, [mask])
    data = SA1BFolder(str(tmp_path), 64, train=False)
    assert len(data) == 2
    images, targets = sam_collate([data[0], data[1]])
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    assert (images[0, :, :32] > 190).all() and (images[0, :, 32:] == 0).all()  # 40 x 80 -> 32 x 64, padded below
    first = targets[0]
    assert first["key"] == os.path.join("sa_000000", "sa_1.json") and first["size"].tolist() == [32, 64]
    assert first["boxes"][0].tolist() == [16.0, 8.0, 48.0, 16.0]  # xyxy scaled by 0.8
    expected = np.zeros((64, 64), dtype=bool)
    expected[8:16, 16:48] = True
    assert np.array_equal(first["masks"][0].numpy().astype(bool), expected)
    assert first["masks"][1, 32:].sum() == 0  # the padding is background in every mask
    torch.manual_seed(0)
    assert len(SA1BFolder(str(tmp_path), 64, train=True, masks_per_image=1)[0][1]["masks"]) == 1


def test_sam_loss_matches_the_focal_dice_and_iou_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = (torch.rand(2, 4, 4) > 0.5).float()
    iou_pred = torch.rand(2, 3)
    losses = sam_mask_loss(logits, target, iou_pred, 20.0, 1.0, 1.0)
    x, t = logits.double().numpy(), target.double().numpy()[:, None]
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).mean((2, 3))
    dice = 1 - (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    best = (20 * focal + dice).argmin(1)
    rows = np.arange(2)
    assert float(losses["loss_focal"]) == pytest.approx(20 * focal[rows, best].mean(), rel=1e-5)
    assert float(losses["loss_dice"]) == pytest.approx(dice[rows, best].mean(), rel=1e-5)
    pred = x > 0
    iou = (pred & (t > 0)).sum((2, 3)) / (pred | (t > 0)).sum((2, 3))
    assert float(losses["loss_iou"]) == pytest.approx(((iou_pred.numpy() - iou) ** 2).mean(), rel=1e-5)


def test_prompts_lie_in_their_masks():
    masks = torch.zeros(2, 20, 30, dtype=torch.uint8)
    masks[0, 2:9, 4:11] = 1    # a 7 x 7 square, centre (7, 5)
    masks[1, 10:19, 20:29] = 1  # 9 x 9, centre (24, 14)
    torch.manual_seed(0)
    points = random_points(masks).long()
    assert all(masks[i, y, x] == 1 for i, (x, y) in enumerate(points.tolist()))
    assert center_points(masks).tolist() == [[7.0, 5.0], [24.0, 14.0]]
    boxes = torch.tensor([[0.0, 0.0, 1000.0, 10.0]])
    moved = noisy_boxes(boxes, 0.1) - boxes
    assert moved.abs().max() <= 20.0 and moved.abs().max() > 0


def test_embedding_store_digest_fill_once_and_read_back(tmp_path):
    image = np.full((32, 32, 3), 50, dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:12, 4:12] = True
    write_sa1b_image(tmp_path / "data" / "sa_000000", 1, image, [mask])
    write_sa1b_image(tmp_path / "data" / "sa_000000", 2, image + 10, [mask])
    data = SA1BFolder(str(tmp_path / "data"), 64, train=False)
    digest = store_digest("t", 1.5, 64, data.root, data.files)
    assert digest != store_digest("t", 1.6, 64, data.root, data.files)  # other weights
    assert digest != store_digest("t", 1.5, 128, data.root, data.files)  # other input size
    assert digest != store_digest("t", 1.5, 64, data.root, data.files[:1])  # other data
    store = EmbeddingStore(str(tmp_path / "store"), digest)
    calls = []

    def encode(images, sizes):
        calls.append(len(images))
        return images.float().mean(1, keepdim=True).repeat(1, 2, 1, 1)[..., ::16, ::16] / 7

    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=sam_collate)
    assert store.fill(loader, encode, torch.device("cpu")) == 2
    assert store.fill(loader, encode, torch.device("cpu")) == 0 and calls == [2]
    keys = [data[1][1]["key"], data[0][1]["key"]]
    read = store.read(keys, torch.device("cpu"))
    expected = encode(torch.stack([data[1][0], data[0][0]]), None)
    assert read.dtype == torch.float32 and torch.allclose(read, expected.half().float())


@pytest.mark.slow
def test_stage_1_learns_the_encoder_and_stage_2_the_mask_decoder_only(tmp_path):
    from mdistiller_dense.config import build_dense_cfg
    from mdistiller_dense.sam.distillers import DecoderFinetune, EncoderMSE
    from mdistiller_dense.sam.prompts import preprocess

    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:30, 10:40] = True
    for k in (1, 2):
        write_sa1b_image(tmp_path / "data" / "sa_000000", k, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                         [mask, ~mask])
    cfg = build_dense_cfg(os.path.join(REPO_ROOT, "configs", "shapes", "sam_mse.yaml"), ["SAM.IMAGE_SIZE", "64"])
    images, targets = sam_collate(list(SA1BFolder(str(tmp_path / "data"), 64, train=True)))
    images = images.float()
    store = EmbeddingStore(str(tmp_path / "store"), "d")
    torch.manual_seed(0)
    teacher_embeddings = torch.randn(2, 256, 4, 4)
    for target, embedding in zip(targets, teacher_embeddings):
        store.write(target["key"], embedding)
    student = build_sam_model("sam_tinyvit_5m", 64)
    stage1 = EncoderMSE(student, cfg, {"train": store, "val": store}, None).train()
    _, losses = stage1(image=images, target=targets)
    sizes = torch.stack([t["size"] for t in targets])
    expected = F.mse_loss(student.image_encoder(preprocess(student, images, sizes)), teacher_embeddings.half().float())
    assert float(losses["loss_mse"].detach()) == pytest.approx(float(cfg.SAM_MSE.WEIGHT * expected.detach()), rel=1e-4)
    losses["loss_mse"].backward()
    graded = {name.split(".")[1] for name, p in stage1.named_parameters() if p.grad is not None}
    assert graded == {"image_encoder"} and len(stage1.get_learnable_parameters()) == len(
        list(student.image_encoder.parameters()))
    student.zero_grad(set_to_none=True)
    stage2 = DecoderFinetune(student, None, cfg).train()
    assert not student.image_encoder.training  # the frozen encoder keeps its BatchNorm statistics
    _, losses = stage2(image=images, target=targets)
    assert set(losses) == {"loss_focal", "loss_dice", "loss_iou"}
    sum(losses.values()).backward()
    graded = {name.split(".")[1] for name, p in stage2.named_parameters() if p.grad is not None}
    assert graded == {"mask_decoder"}
    assert {id(p) for p in stage2.get_learnable_parameters()} == {id(p) for p in student.mask_decoder.parameters()}


def test_bad_sam_settings_are_one_line_config_errors(tmp_path):
    from mdistiller.errors import ConfigError, UnknownNameError
    from mdistiller_dense.build import dense_methods
    from mdistiller_dense.config import build_dense_cfg
    from mdistiller_dense.data import build_dense_datasets

    sam_mse = os.path.join(REPO_ROOT, "configs", "shapes", "sam_mse.yaml")
    with pytest.raises(ConfigError, match="SOLVER.TRAINER sam"):
        dense_methods(build_dense_cfg(sam_mse, ["SOLVER.TRAINER", "dense"]))
    with pytest.raises(ConfigError, match="DATASET.TYPE sa1b or shapes"):
        build_dense_datasets(build_dense_cfg(sam_mse, ["DATASET.TYPE", "coco"]))
    with pytest.raises(ConfigError, match="multiple of 64"):
        build_sam_model("sam_tinyvit_5m", 100)
    with pytest.raises(UnknownNameError, match="sam_vit_h"):
        build_sam_model("sam_vit_hh")


def test_sa1b_configs_are_the_supplements_and_the_shapes_ones_chain():
    """FreeKD supplement A.3: ViT-H -> TinyViT, 1024 px, 10,000 encoder + 10,000 decoder steps, 8 GPUs."""
    from mdistiller_dense.config import build_dense_cfg

    configs = os.path.join(REPO_ROOT, "configs")
    for method in ("sam_mse", "freekd"):
        cfg = build_dense_cfg(os.path.join(configs, "sa1b", method, "sam_vit_h_tinyvit.yaml"))
        assert (cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT) == (
            method.upper(), "sam_vit_h", "sam_tinyvit_5m")
        assert (cfg.SAM.IMAGE_SIZE, cfg.SAM.ENCODER_ITERS, cfg.SOLVER.ITERS) == (1024, 10000, 10000)
        assert cfg.DATASET.TYPE == "sa1b" and cfg.SOLVER.TRAINER == "sam" and cfg.SOLVER.BATCH_SIZE == 8
    teacher = build_dense_cfg(os.path.join(configs, "shapes", "sam_teacher.yaml"))
    teacher_run = os.path.join(teacher.LOG.PREFIX, teacher.EXPERIMENT.PROJECT, teacher.EXPERIMENT.NAME, "student_best")
    for name in ("sam_mse", "sam_freekd"):
        cfg = build_dense_cfg(os.path.join(configs, "shapes", f"{name}.yaml"))
        assert os.path.normpath(cfg.DISTILLER.TEACHER_WEIGHTS) == os.path.normpath(teacher_run)
        assert cfg.DISTILLER.TEACHER == teacher.DISTILLER.STUDENT
        assert cfg.SAM.IMAGE_SIZE == teacher.SAM.IMAGE_SIZE == cfg.DATASET.SHAPES.IMAGE_SIZE
    assert cfg.FREEKD.NUM_STAGES == 1
