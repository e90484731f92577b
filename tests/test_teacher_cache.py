"""The teacher cache (mdistiller/engine/teacher_cache.py): view numbering, what a method may cache,
sizes and the disk check, shards that resume / are checked / rebuilt, the digest (stale caches are
never read, sweeps share one), a cached run equal to the online one, replay and its top-k logits."""

import dataclasses
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO_ROOT
from helpers import STUDENT_CFG, assert_ok, assert_user_error, kd_trainer
from mdistiller.dataset import get_dataset
from mdistiller.dataset.fast_aug import BatchedAugmentation, InMemoryLoader
from mdistiller.distillers import distiller_dict
from mdistiller.engine import teacher_cache as tc
from mdistiller.engine.build import build_distiller, build_model
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.checkpoint import load_checkpoint, save_checkpoint
from mdistiller.errors import ConfigError

CACHE_TOOL = os.path.join(REPO_ROOT, "tools", "cache_teacher.py")
TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")


def cifar_like_loader(n: int = 3) -> InMemoryLoader:
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = BatchedAugmentation(size=32, padding=4, flip_p=0.5, divisor=255.0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    return InMemoryLoader(None, images, list(range(n)), aug, batch_size=2, with_index=True).to(
        torch.device("cpu"), channels_last=False)


def test_cifar_views_are_162_numbered_one_to_one_and_render_the_crop_and_flip():
    loader = cifar_like_loader()
    assert loader.view_count == 9 * 9 * 2
    views = torch.arange(loader.view_count)
    top, left, flip = loader.view_draws(views)
    assert torch.equal(loader.view_index(top, left, flip), views)
    assert len({(int(t), int(l), bool(f)) for t, l, f in zip(top, left, flip)}) == 162
    padded = np.pad(loader.images.numpy()[:, 4:-4, 4:-4], ((0, 0), (4, 4), (4, 4), (0, 0)))  # from the raw images
    for view in (0, 17, 161):
        t, l, f = int(top[view]), int(left[view]), bool(flip[view])
        crop = padded[1, t:t + 32, l:l + 32]
        crop = crop[:, ::-1] if f else crop
        expected = (crop.astype(np.float32) / 255.0 - np.array([0.5, 0.4, 0.3], np.float32)) / np.float32(0.2)
        got = loader.apply(torch.tensor([1]), top[view:view + 1], left[view:view + 1], flip[view:view + 1])
        np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-6)


def test_cifar100_size_is_printed_as_1_6_gb():
    size = tc.cache_bytes(50000 * 162, {"logits": 100}, "float16")
    assert size == 50000 * 162 * 100 * 2
    assert tc.human_bytes(size) == "1.62 GB"


def _digits_distiller(method: str, *opts):
    cfg = build_cfg(STUDENT_CFG, ["DATASET.IMAGE_SIZE=8", f"DISTILLER.TYPE={method}", "TEACHER_CACHE.MODE=views",
                                  *opts])
    cls = distiller_dict[method]
    return cls(build_model("resnet8", "digits", 10), build_model("wrn_16_2", "digits", 10), cfg, num_data=100,
               num_classes=10), cfg


@pytest.mark.parametrize("method", ["AT", "FITNET", "SFAKD"])
def test_map_methods_are_refused_in_one_line_naming_why_and_what_to_do(method):
    distiller, cfg = _digits_distiller(method)
    with pytest.raises(ConfigError) as err:
        tc.check_cacheable(distiller, cfg)
    message = str(err.value)
    assert "\n" not in message and "feature maps" in message and "TEACHER_CACHE.MODE off" in message
    assert ("SFAKD.POOLED True" in message) == (method == "SFAKD")


def test_logit_methods_and_pooled_sfakd_declare_cacheable_outputs():
    assert tc.check_cacheable(_digits_distiller("KD")[0], _digits_distiller("KD")[1]) == ("logits",)
    sfakd, cfg = _digits_distiller("SFAKD", "SFAKD.POOLED=True")
    assert tc.check_cacheable(sfakd, cfg) == ("logits", "pre_logits")
    assert sfakd.teacher_modules_kept == (sfakd.classifier_name,)


def test_disk_space_is_checked_before_a_build(tmp_path, monkeypatch):
    cache = tc.ViewCache(str(tmp_path / "c"), 50000, 162, {"logits": 100}, "float16", "float32", 1000)
    monkeypatch.setattr(tc.shutil, "disk_usage", lambda path: type("U", (), {"free": 10**9})())
    with pytest.raises(ConfigError, match=r"needs 1.62 GB but .* has 1.00 GB free.*TEACHER_CACHE.DIR"):
        cache.prepare()


# -- shards: resume, corruption, truncation (a toy teacher, exact values known) -------------------------
class ToyTeacher:
    """outputs = image index * 10 + view, per row, counting the views it computed."""

    def __init__(self, fail_at_row: int = -1) -> None:
        self.rows = 0
        self.fail_at_row = fail_at_row

    def __call__(self, images):
        if self.fail_at_row >= 0 and self.rows >= self.fail_at_row:
            raise KeyboardInterrupt("stopped")
        self.rows += images.shape[0]
        return {"logits": images[:, :1].repeat(1, 3) + torch.arange(3.0)}


def toy_cache(tmp_path):
    return tc.ViewCache(str(tmp_path / "toy"), num_images=10, num_views=4, widths={"logits": 3}, dtype="float32",
                        output_dtype="float32", shard_images=3)


def toy_build(cache, teacher):
    render = lambda index, view: (index * 10 + view).float()[:, None]  # noqa: E731
    tc.ensure_built(cache, lambda shards, progress: cache.build(render, teacher, torch.device("cpu"), 5, shards,
                                                                False))


def expected_rows():
    index, view = np.divmod(np.arange(40), 4)
    return (index * 10 + view)[:, None] + np.arange(3.0)


def test_an_interrupted_build_resumes_at_the_first_missing_shard(tmp_path):
    cache = toy_cache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        toy_build(cache, ToyTeacher(fail_at_row=25))  # shards of 12 rows: 0 and 1 finished, 2 not
    assert cache.done_shards() == [0, 1]
    teacher = ToyTeacher()
    toy_build(tc.ViewCache(**_same(cache)), teacher)
    assert teacher.rows == 40 - 24
    np.testing.assert_array_equal(np.load(cache.array_path("logits")), expected_rows())


def _same(cache):
    return dict(directory=cache.directory, num_images=10, num_views=4, widths={"logits": 3}, dtype="float32",
                output_dtype="float32", shard_images=3)


def test_a_corrupt_shard_is_detected_and_rebuilt_with_one_line(tmp_path, capsys):
    cache = toy_cache(tmp_path)
    toy_build(cache, ToyTeacher())
    data = np.load(cache.array_path("logits"), mmap_mode="r+")
    data[13, 1] = 99.0  # a row of shard 1
    data.flush()
    del data
    capsys.readouterr()
    teacher = ToyTeacher()
    toy_build(tc.ViewCache(**_same(cache)), teacher)
    lines = [line for line in capsys.readouterr().out.splitlines() if "checksum" in line]
    assert len(lines) == 1 and "shard(s) 1 fail" in lines[0] and "rebuilding" in lines[0]
    assert teacher.rows == 12
    np.testing.assert_array_equal(np.load(cache.array_path("logits")), expected_rows())


def test_a_truncated_cache_is_detected_and_rebuilt(tmp_path, capsys):
    cache = toy_cache(tmp_path)
    toy_build(cache, ToyTeacher())
    path = cache.array_path("logits")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 40)
    capsys.readouterr()
    teacher = ToyTeacher()
    toy_build(tc.ViewCache(**_same(cache)), teacher)
    assert "truncated" in capsys.readouterr().out
    assert teacher.rows == 40
    np.testing.assert_array_equal(np.load(path), expected_rows())


# -- the digest ---------------------------------------------------------------------------------
def _digest(tmp_path, *opts, teacher_seed=1, augmentation=None):
    cfg = build_cfg(STUDENT_CFG, [f"LOG.PREFIX={tmp_path}", "DATASET.IMAGE_SIZE=8", "DISTILLER.TYPE=KD",
                                  "SOLVER.AMP=False", *opts])
    return _digest_of(cfg, teacher_seed, augmentation)


def _digest_of(cfg, teacher_seed=1, augmentation=None):
    loader, _, num_data, _ = get_dataset(cfg)
    if augmentation:
        loader = InMemoryLoader(loader.dataset, loader.images[:, 1:-1, 1:-1], loader.targets,
                                dataclasses.replace(loader.augmentation, **augmentation), 64)
    torch.manual_seed(teacher_seed)
    teacher = build_model("wrn_16_2", "digits", 10)
    distiller = distiller_dict[cfg.DISTILLER.TYPE](build_model(cfg.DISTILLER.STUDENT, "digits", 10), teacher, cfg)
    return tc.view_digest(distiller, loader, ("logits",), cfg, None, True).hexdigest()


@pytest.mark.slow
def test_every_digest_input_changes_the_digest_and_sweep_settings_do_not(tmp_path):
    base = _digest(tmp_path)
    assert _digest(tmp_path, "KD.TEMPERATURE=2", "SOLVER.LR=0.1", "DISTILLER.STUDENT=resnet14") == base
    changed = {
        "teacher weights": _digest(tmp_path, teacher_seed=2),
        "train fraction": _digest(tmp_path, "DATASET.TRAIN_FRACTION=0.5"),
        "image size": _digest(tmp_path, "DATASET.IMAGE_SIZE=12"),
        "normalisation": _digest(tmp_path, augmentation={"mean": (0.1,)}),
        "view set": _digest(tmp_path, augmentation={"padding": 2}),
        "dtype": _digest(tmp_path, "TEACHER_CACHE.DTYPE=float32"),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed


@pytest.mark.slow
def test_the_trials_of_a_sweep_over_temperature_and_seed_share_one_cache():
    from mdistiller.experiments.sweep_runner import plan_trials
    from mdistiller.experiments.sweeps import load_sweep, train_arguments

    spec = load_sweep(os.path.join(REPO_ROOT, "configs", "sweeps", "digits_kd_temperature.yaml"))
    trials = plan_trials(spec)
    chosen = [trials[0], trials[4], trials[8]]  # temperatures 1, 4, 8 with seeds 0, 1, 2
    digests = set()
    for trial in chosen:
        cfg_file, opts = train_arguments(trial.command, spec["program"])
        cfg = build_cfg(os.path.join(REPO_ROOT, cfg_file), opts + ["TEACHER_CACHE.MODE=views"])
        digests.add((cfg.KD.TEMPERATURE, cfg.EXPERIMENT.SEED, _digest_of(cfg)))
    assert len({(t, s) for t, s, _ in digests}) == 3 and len({d for _, _, d in digests}) == 1


# -- whole runs ---------------------------------------------------------------------------------
def count_teacher_calls(trainer):
    calls = [0]
    trainer.distiller.teacher.register_forward_pre_hook(lambda module, inputs: calls.__setitem__(0, calls[0] + 1))
    return calls


def assert_same_student(a, b):
    sa, sb = a.distiller.student.state_dict(), b.distiller.student.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
def test_float32_cached_run_equals_the_online_run_after_two_epochs(tmp_path, amp):
    opts = [f"SOLVER.AMP={amp}", "TEACHER_CACHE.DTYPE=float32"]
    online = kd_trainer(tmp_path, "online", 2, opts)
    online.train()
    cached = kd_trainer(tmp_path, "cached", 2, opts + ["TEACHER_CACHE.MODE=views"])
    calls = count_teacher_calls(cached)
    cached.train()
    assert calls[0] == 0 and cached.distiller.inference_teacher is None
    assert_same_student(online, cached)  # exact: torch.equal on every tensor
    again = kd_trainer(tmp_path, "again", 1, opts + ["TEACHER_CACHE.MODE=views"])
    assert again.teacher_cache.directory == cached.teacher_cache.directory  # built once, read by the next run


@pytest.mark.slow
def test_a_changed_teacher_builds_a_new_cache_of_its_own_outputs(tmp_path):
    first = kd_trainer(tmp_path, "a", 1, ["TEACHER_CACHE.MODE=views", "TEACHER_CACHE.DTYPE=float32"])
    weights = load_checkpoint(str(tmp_path / "teacher.pth"))
    weights["model"]["fc.bias"] += 1.0
    save_checkpoint(weights, str(tmp_path / "teacher.pth"))
    second = kd_trainer(tmp_path, "b", 1, ["TEACHER_CACHE.MODE=views", "TEACHER_CACHE.DTYPE=float32"])
    assert second.teacher_cache.directory != first.teacher_cache.directory
    a = first.teacher_cache.lookup(torch.tensor([3]), torch.tensor([2]))["logits"]
    b = second.teacher_cache.lookup(torch.tensor([3]), torch.tensor([2]))["logits"]
    torch.testing.assert_close(b, a + 1.0, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_replay_records_then_reads_and_both_equal_the_online_run(tmp_path):
    opts = ["TEACHER_CACHE.DTYPE=float32", "DATASET.FAST_AUG=False"]
    online = kd_trainer(tmp_path, "online", 2, opts)
    online.train()
    recording = kd_trainer(tmp_path, "record", 2, opts + ["TEACHER_CACHE.MODE=replay"])
    recording.train()
    replay = kd_trainer(tmp_path, "replay", 2, opts + ["TEACHER_CACHE.MODE=replay"])
    calls = count_teacher_calls(replay)
    replay.train()
    assert calls[0] == 0
    assert_same_student(online, recording)
    assert_same_student(online, replay)


def test_topk_replay_gives_the_renormalised_topk_teacher_softmax(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(4, 10) * 3
    images = torch.randn(4, 3, 2, 2)
    cache = tc.ReplayCache(str(tmp_path), steps=1, batch_size=4, widths={"logits": 10}, topk=3, dtype="float32",
                           output_dtype=torch.float32, teacher=lambda image: {"logits": logits})
    cache.batch_outputs(images, {}, epoch=1, step=0)  # records
    cache.epoch = None
    cache.teacher = None  # reading must not call it
    restored = cache.batch_outputs(images, {}, epoch=1, step=0)["teacher_output"][0]
    temperature = 4.0
    p = np.exp(logits.numpy() / temperature)
    p /= p.sum(1, keepdims=True)
    keep = np.argsort(-p, axis=1)[:, :3]
    expected = np.zeros_like(p)
    np.put_along_axis(expected, keep, np.take_along_axis(p, keep, 1), 1)
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(F.softmax(restored / temperature, 1).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_topk_is_refused_for_a_method_reading_every_logit(tmp_path):
    distiller, cfg = _digits_distiller("DKD", "TEACHER_CACHE.MODE=replay", "TEACHER_CACHE.TOPK=5")
    with pytest.raises(ConfigError, match="reads every teacher logit.*TEACHER_CACHE.TOPK 0"):
        tc.replay_cache_for_run(cfg, distiller, [0], torch.device("cpu"), lambda: torch.no_grad(), None, False)


# -- the tools ------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_cache_tool_builds_with_size_and_train_reads_it_and_refuses_map_methods(tmp_path, tool):
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": build_model("wrn_16_2", "digits", 10).state_dict()}, teacher)
    common = ["--cfg", STUDENT_CFG, f"LOG.PREFIX={tmp_path}", "DATASET.IMAGE_SIZE=8", "DISTILLER.TYPE=KD",
              f"DISTILLER.TEACHER_WEIGHTS={teacher}", "SOLVER.EPOCHS=1"]
    built = tool(CACHE_TOOL, *common)
    assert_ok(built)
    assert "1,437 images x 9 views x (10 logits) float16 = " in built.stdout and "Teacher cache ready" in built.stdout
    trained = tool(TRAIN, *common, "TEACHER_CACHE.MODE=views")
    assert_ok(trained)
    assert "Building the teacher cache" not in trained.stdout
    refused = tool(TRAIN, *common, "DISTILLER.TYPE=AT", "TEACHER_CACHE.MODE=views")
    assert_user_error(refused, "AT reads the teacher's feature maps", "TEACHER_CACHE.MODE off")


@pytest.mark.e2e
def test_two_processes_build_the_shards_between_them_and_train_as_online(tmp_path):
    import json
    import subprocess

    from helpers import WORKER, finish, process_env

    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(1)
    torch.save({"model": build_model("wrn_16_2", "digits", 10).state_dict()}, teacher)

    def two_processes(name, *opts):
        store = tmp_path / f"store_{name}"
        args = ["--cfg", STUDENT_CFG, f"LOG.PREFIX={tmp_path}", f"EXPERIMENT.NAME={name}", "DATASET.IMAGE_SIZE=8",
                "DISTILLER.TYPE=KD", f"DISTILLER.TEACHER_WEIGHTS={teacher}", "SOLVER.EPOCHS=2", "SOLVER.AMP=False",
                "SOLVER.BATCH_SIZE=32", "TEACHER_CACHE.DTYPE=float32", *opts]
        finish([subprocess.Popen([sys.executable, WORKER, str(store), str(r), "2", *args], cwd=str(tmp_path),
                                 env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for r in (0, 1)])
        return torch.load(tmp_path / "quickstart" / name / "student_latest", weights_only=True)["model"]

    online = two_processes("online")
    cached = two_processes("cached", "TEACHER_CACHE.MODE=views", "TEACHER_CACHE.SHARD_IMAGES=300")
    (cache_dir,) = [p for p in (tmp_path / "teacher_cache").iterdir() if p.is_dir()]  # one file set for both ranks
    markers = [json.loads(p.read_text()) for p in (cache_dir / "shards").iterdir()]
    assert len(markers) == 5 and {m["rank"] for m in markers} == {0, 1}
    for key in online:
        assert torch.equal(online[key], cached[key]), key


@pytest.mark.slow
def test_bench_times_each_method_on_cached_outputs_beside_the_floor(tmp_path):
    from mdistiller.benchmark import run_benchmark

    cfg = build_cfg(STUDENT_CFG, ["DATASET.IMAGE_SIZE=8", "DISTILLER.TYPE=KD", "SOLVER.AMP=False",
                                  "SOLVER.BATCH_SIZE=8", f"DISTILLER.TEACHER_WEIGHTS={tmp_path / 'none'}",
                                  "TEACHER_CACHE.MODE=views"])
    record = run_benchmark(cfg, ["KD", "AT"], iters=1, warmup=0)
    cached = record["methods"]["KD (cached)"]
    assert cached["img_per_s"] > 0 and cached["overhead_vs_student"] > 0 and "error" not in cached
    assert "feature maps" in record["methods"]["AT (cached)"]["error"]
    build = record["cache_build"]
    assert (build["images"], build["views"], build["bytes"]) == (1437, 9, 1437 * 9 * 10 * 2)
