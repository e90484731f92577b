"""Corruption robustness (tools/robustness.py, mdistiller/experiments/corruptions.py, robustness.py):
severity 0 is the clean evaluation, a corruption is the library's function on the same image and
seed, the small-image path, the published CIFAR-100-C arrays, mPC / rPC / mCE against a hand
computation, and the tool's outputs."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from fake_data import write_fake_cifar100
from helpers import assert_ok, assert_user_error
from mdistiller.dataset.cifar100 import SKIP_MD5_ENV
from mdistiller.engine.cfg import CFG
from mdistiller.experiments.corruptions import CorruptedImages, image_seed
from mdistiller.experiments.robustness import pixel_source, published_set, summarize
from mdistiller.models import cifar_model_dict

ROBUSTNESS = os.path.join(REPO_ROOT, "tools", "robustness.py")
EVAL = os.path.join(REPO_ROOT, "tools", "eval.py")


def dataset_cfg(kind, root="data", size=0):
    cfg = CFG.clone()
    cfg.defrost()
    cfg.DATASET.TYPE, cfg.DATASET.ROOT, cfg.DATASET.IMAGE_SIZE = kind, str(root), size
    return cfg


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv(SKIP_MD5_ENV, "1")
    written = write_fake_cifar100(tmp_path, num_train=4, num_test=6)
    return tmp_path, written["test"]


def test_severity_zero_gives_the_clean_test_items(fake_cifar):
    from mdistiller.dataset import build_cifar100

    root, _ = fake_cifar
    cfg = dataset_cfg("cifar100", root)
    clean = build_cifar100(cfg)[1]
    items = CorruptedImages(pixel_source(cfg), "fog", 0)
    for i in range(len(clean)):
        assert torch.equal(items[i][0], clean[i][0]) and items[i][1] == clean[i][1]


def test_a_corruption_is_the_library_function_on_the_same_image_and_seed(fake_cifar):
    from imagecorruptions import corrupt

    from mdistiller.dataset.cifar100 import cifar100_val_transform

    root, (images, labels) = fake_cifar
    source = pixel_source(dataset_cfg("cifar100", root))
    for corruption, severity in (("gaussian_noise", 2), ("impulse_noise", 4), ("frost", 3), ("jpeg_compression", 5)):
        items = CorruptedImages(source, corruption, severity, seed=11)
        for i in (0, 3):
            seed = image_seed(11, corruption, severity, i)
            np.random.seed(seed)
            extra = {"seed": seed} if corruption == "impulse_noise" else {}
            expected = corrupt(images[i], severity=severity, corruption_name=corruption, **extra)
            image, target = items[i]
            assert target == labels[i]
            assert torch.equal(image, cifar100_val_transform()(Image.fromarray(np.uint8(expected))))
        if corruption != "jpeg_compression":  # the only one of the four without randomness
            assert not torch.equal(items[0][0], CorruptedImages(source, corruption, severity, seed=12)[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("corruption", ["shot_noise", "glass_blur"])
def test_images_under_32_pixels_are_corrupted_at_an_integer_multiple_and_brought_back(corruption):
    from imagecorruptions import corrupt

    source = pixel_source(dataset_cfg("digits", size=16))
    items = CorruptedImages(source, corruption, 3, seed=0)
    pixels = np.clip(np.rint(source.pixels(5)), 0, 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.BILINEAR))
    seed = image_seed(0, corruption, 3, 5)
    np.random.seed(seed)
    extra = {"seed": seed} if corruption == "glass_blur" else {}
    out = corrupt(big, severity=3, corruption_name=corruption, **extra)
    expected = source.finish(np.asarray(Image.fromarray(np.uint8(out)).resize((16, 16), Image.BOX)))
    assert items[5][0].shape == (3, 16, 16)
    assert torch.allclose(items[5][0], expected)
    assert not torch.allclose(items[5][0], source.finish(source.pixels(5)), atol=0.05)


def test_published_cifar100_c_arrays_are_read_by_severity(fake_cifar):
    root, (images, labels) = fake_cifar
    folder = root / "CIFAR-100-C"
    folder.mkdir()
    corrupted = np.random.default_rng(1).integers(0, 256, size=(5 * len(labels), 32, 32, 3), dtype=np.uint8)
    np.save(folder / "snow.npy", corrupted)
    np.save(folder / "labels.npy", np.tile(labels, 5))
    cfg = dataset_cfg("cifar100", root)
    source = pixel_source(cfg)
    severity3 = published_set(cfg, source, "snow", 3)
    image, target = severity3[2]
    assert target == labels[2]
    assert torch.equal(image, source.finish(corrupted[2 * len(labels) + 2]))
    assert published_set(cfg, source, "fog", 3) is None


@pytest.mark.slow
def test_imagenet_is_corrupted_at_the_224_crop_and_imagenet_c_trees_are_read(tmp_path):
    from fake_data import write_fake_imagenet

    from mdistiller.dataset.imagenet import imagenet_val_transform

    write_fake_imagenet(tmp_path, size=(300, 260))
    cfg = dataset_cfg("imagenet", tmp_path, size=224)
    source = pixel_source(cfg)
    assert source.pixels(0).shape == (224, 224, 3)
    val_path = sorted((tmp_path / "imagenet" / "val").rglob("*.JPEG"))[0]
    with Image.open(val_path) as clean:
        assert torch.equal(CorruptedImages(source, "fog", 0)[0][0], imagenet_val_transform(224)(clean.convert("RGB")))
    tree = tmp_path / "ImageNet-C" / "pixelate" / "4"
    for path in (tmp_path / "imagenet" / "val").rglob("*.JPEG"):
        (tree / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((224, 224, 3), 7, np.uint8)).save(tree / path.parent.name / path.name)
    image, target = published_set(cfg, source, "pixelate", 4)[1]
    assert target == source.targets[1] and torch.equal(image, source.finish(np.full((224, 224, 3), 7, np.uint8)))


def test_mpc_rpc_and_mce_against_a_hand_computation():
    model = {"fog": {1: 80.0, 2: 60.0}, "snow": {1: 70.0, 2: 50.0}}
    base = {"fog": {1: 60.0, 2: 40.0}, "snow": {1: 50.0, 2: 30.0}}
    scores = summarize(90.0, model, {"clean": 80.0, "accuracy": base})
    assert scores["mPC"] == pytest.approx((80 + 60 + 70 + 50) / 4)          # 65
    assert scores["rPC"] == pytest.approx(100 * 65 / 90)
    # CE_fog = (20 + 40) / (40 + 60) = 0.6, CE_snow = (30 + 50) / (50 + 70) = 2 / 3
    assert scores["mCE"] == pytest.approx(100 * (0.6 + 2 / 3) / 2)
    # relative: fog (10 + 30) / (20 + 40), snow (20 + 40) / (30 + 50)
    assert scores["relative_mCE"] == pytest.approx(100 * (40 / 60 + 60 / 80) / 2)
    assert scores["per_corruption"] == {"fog": 70.0, "snow": 60.0}
    # a baseline that loses nothing under snow: relative mCE undefined, mCE still defined
    flat = summarize(90.0, model, {"clean": 50.0, "accuracy": {"fog": base["fog"], "snow": {1: 50.0, 2: 50.0}}})
    assert flat["relative_mCE"] is None and flat["mCE"] == pytest.approx(100 * (0.6 + 80 / 100) / 2)


def student_file(tmp_path, name="resnet8", seed=0):
    torch.manual_seed(seed)
    path = tmp_path / f"{name}_{seed}.pth"
    torch.save({"model": cifar_model_dict[name][0](num_classes=10).state_dict()}, path)
    return str(path)


@pytest.mark.e2e
def test_the_tool_scores_checkpoints_side_by_side_and_writes_its_outputs(tool, tool_in_process, tmp_path):
    a, b = student_file(tmp_path, seed=0), student_file(tmp_path, seed=1)
    out = {k: str(tmp_path / f"rob.{k}") for k in ("json", "md", "png")}
    result = tool(ROBUSTNESS, "-d", "digits", "-m", "resnet8", "-c", a, "-c", b, "--baseline", b,
                  "--corruptions", "gaussian_noise,fog", "--severities", "1,5", "--limit", "40", "-bs", "16",
                  "--json", out["json"], "--md", out["md"], "--plot", out["png"], "SOLVER.AMP", "False",
                  cwd=str(tmp_path))
    assert_ok(result)
    record = json.loads(open(out["json"]).read())
    assert list(record["models"]) == ["resnet8", "resnet8 #2"] and record["baseline"] == "resnet8 #2"
    first = record["models"]["resnet8"]
    assert sorted(first["accuracy"]) == ["fog", "gaussian_noise"] and sorted(first["accuracy"]["fog"]) == ["1", "5"]
    values = [v for per in first["accuracy"].values() for v in per.values()]
    assert first["mPC"] == pytest.approx(sum(values) / 4)
    assert record["models"]["resnet8 #2"]["mCE"] == pytest.approx(100.0)
    assert "| resnet8 #2 |" in open(out["md"]).read()
    with Image.open(out["png"]) as image:
        assert image.format == "PNG" and image.size == (int(3.4 * 2 * 110), int(3.4 * 110))

    clean = tool_in_process(EVAL, "-m", "resnet8", "-c", a, "-d", "digits", "SOLVER.AMP", "False", cwd=str(tmp_path))
    full = tool_in_process(ROBUSTNESS, "-d", "digits", "-m", "resnet8", "-c", a, "--corruptions", "contrast",
                           "--severities", "2", "--json", out["json"], "SOLVER.AMP", "False", cwd=str(tmp_path))
    assert_ok(full)
    clean_top1 = float(clean.stdout.split("Top-1: ")[1].split()[0])
    assert json.loads(open(out["json"]).read())["models"]["resnet8"]["clean"] == pytest.approx(clean_top1, abs=0.005)


@pytest.mark.e2e
def test_bad_input_is_one_line(tool_in_process, tmp_path):
    a = student_file(tmp_path)
    assert_user_error(tool_in_process(ROBUSTNESS, "-d", "digits", "-m", "resnet8", "-c", a, "--corruptions", "rain"),
                      "Unknown corruption 'rain'")
    assert_user_error(tool_in_process(ROBUSTNESS, "-d", "digits", "-m", "resnet8", "-c", a, "--source", "files",
                                      "--corruptions", "fog", "--severities", "1"), "--source files")


@pytest.mark.slow
def test_dense_sets_corrupt_the_image_and_keep_the_targets(tmp_path):
    from dense_helpers import dense_cfg

    from mdistiller.experiments.corruptions import corrupted_tensor
    from mdistiller_dense.corrupted import CorruptedDense
    from mdistiller_dense.data import build_dense_datasets

    detection = build_dense_datasets(dense_cfg(tmp_path, "NONE"))[1]
    segmentation = build_dense_datasets(dense_cfg(tmp_path, "NONE", student="pspnet_resnet18"))[1]
    for dataset in (detection, segmentation):
        clean_image, clean_target = dataset[1]
        assert CorruptedDense(dataset, "fog", 0)[1][0] is not None
        assert torch.equal(CorruptedDense(dataset, "fog", 0)[1][0], clean_image)
        image, target = CorruptedDense(dataset, "motion_blur", 2, seed=3)[1]
        pixels = clean_image if dataset is detection else clean_image * dataset.std + dataset.mean
        expected = corrupted_tensor(pixels, "motion_blur", 2, image_seed(3, "motion_blur", 2, 1))
        if dataset is segmentation:
            expected = (expected - dataset.mean) / dataset.std
            assert torch.equal(target, clean_target)
        else:
            assert torch.equal(target["boxes"], clean_target["boxes"])
        assert torch.allclose(image, expected, atol=1e-5) and not torch.allclose(image, clean_image, atol=1e-2)
    assert CorruptedDense(detection, "fog", 1).coco is detection.coco


@pytest.mark.e2e
def test_the_tool_scores_a_detector_under_corruption(tool_in_process, tmp_path):
    from dense_helpers import SHAPES_OPTS, dense_cfg

    from mdistiller_dense.data import CATEGORIES
    from mdistiller_dense.models import build_dense_model

    torch.manual_seed(0)
    detector = build_dense_model("fcos_resnet18_fpn", len(CATEGORIES) + 1, dense_cfg(tmp_path, "NONE").MODEL)
    torch.save({"model": detector.state_dict()}, tmp_path / "detector.pth")
    out = tmp_path / "dense.json"
    result = tool_in_process(ROBUSTNESS, "--cfg", os.path.join(REPO_ROOT, "configs", "shapes", "student.yaml"),
                             "-c", str(tmp_path / "detector.pth"), "-m", "fcos_resnet18_fpn",
                             "--corruptions", "gaussian_noise", "--severities", "3", "--json", str(out),
                             *SHAPES_OPTS, "DATASET.ROOT", str(tmp_path / "data"), cwd=str(tmp_path))
    assert_ok(result)
    record = json.loads(out.read_text())
    assert record["metric"] == "AP"
    scores = record["models"]["fcos_resnet18_fpn"]
    assert 0.0 <= scores["accuracy"]["gaussian_noise"]["3"] <= 100.0 and 0.0 <= scores["clean"] <= 100.0
