"""MDistiller scripts run unchanged: they merge configs with yacs directly
(``cfg = CFG.clone(); cfg.merge_from_file(f)``, DATASET.IMAGE_SIZE left at 0) and build a distiller
from that config themselves."""

import os

import pytest
import torch
import yaml

from conftest import REPO_ROOT
from mdistiller.distillers import distiller_dict
from mdistiller.engine.cfg import CFG
from mdistiller.engine.stages import stages_of
from mdistiller.errors import ConfigError, IncompatibleModelError
from mdistiller.models import cifar_model_dict

# The 42 config files of MDistiller's own tree (github.com/megvii-research/mdistiller, configs/).
CIFAR_METHODS = ["at", "crd", "fitnet", "kd", "kdsvd", "nst", "ofd", "pkt", "reviewkd", "rkd", "sp", "vanilla", "vid"]
DKD_PAIRS = ["res110_res32", "res32x4_res8x4", "res32x4_shuv1", "res32x4_shuv2", "res50_mv2", "res56_res20",
             "vgg13_mv2", "vgg13_vgg8", "wrn40_2_shuv1", "wrn40_2_wrn_16_2", "wrn40_2_wrn_40_1"]
DOT_PAIRS = ["res32x4_res8x4", "res32x4_shuv2", "vgg13_vgg8"]
MDISTILLER_CONFIGS = (
    [f"cifar100/{m}.yaml" for m in CIFAR_METHODS]
    + [f"cifar100/dkd/{p}.yaml" for p in DKD_PAIRS]
    + [f"cifar100/dot/{p}.yaml" for p in DOT_PAIRS]
    + [f"imagenet/r34_r18/{m}.yaml" for m in ["at", "crd", "dkd", "dot", "kd", "reviewkd"]]
    + [f"imagenet/r50_mv1/{m}.yaml" for m in ["at", "crd", "dkd", "dot", "kd", "ofd", "reviewkd"]]
    + [f"tiny_imagenet/dot/{p}.yaml" for p in ["r18_mv2", "r18_shuv2"]]
)


def test_the_list_is_mdistillers_42():
    assert len(MDISTILLER_CONFIGS) == len(set(MDISTILLER_CONFIGS)) == 42


def file_values(path: str, prefix: str = "") -> dict:
    """The leaf values a YAML config file sets, by dotted key, its `_BASE_` file's first."""
    with open(path) as f:
        data = yaml.safe_load(f)
    values = file_values(os.path.join(os.path.dirname(path), data.pop("_BASE_"))) if "_BASE_" in data else {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                values[f"{prefix}{key}"] = value

    walk(data, "")
    return values


@pytest.mark.parametrize("name", MDISTILLER_CONFIGS)
def test_mdistiller_config_merges_through_raw_yacs(name):
    path = os.path.join(REPO_ROOT, "configs", name)
    cfg = CFG.clone()
    cfg.merge_from_file(path)
    values = file_values(path)
    assert values
    for key, value in values.items():  # every value of the file arrived; an int where a float is declared as a float
        section, *rest = key.split(".")
        merged, default = cfg[section], CFG[section]
        for part in rest:
            merged, default = merged[part], default[part]
        assert merged == (list(value) if isinstance(value, list) else value), key
        assert not isinstance(default, float) or isinstance(merged, float), key


def test_raw_yacs_merge_stays_strict():
    cfg = CFG.clone()
    with pytest.raises(ConfigError, match="closest valid keys: KD.TEMPERATURE"):
        cfg.merge_from_list(["KD.TEMPERATUR", "2"])
    cfg.merge_from_list(["KD.TEMPERATURE", "2"])
    assert cfg.KD.TEMPERATURE == 2.0 and isinstance(cfg.KD.TEMPERATURE, float)


def method_config(method: str) -> str:
    """The method's CIFAR-100 config file: configs/cifar100/<method>.yaml, else its first pair file."""
    name = method.lower()
    flat = os.path.join(REPO_ROOT, "configs", "cifar100", f"{name}.yaml")
    if os.path.isfile(flat):
        return flat
    directory = os.path.join(REPO_ROOT, "configs", "cifar100", name)
    return os.path.join(directory, sorted(os.listdir(directory))[0])


# Methods whose student must be of another kind than MDistiller's CIFAR models (DEIT: a ViT with a
# distillation token); such a script is refused in one line, checked below.
TOKEN_STUDENT_METHODS = ("DEIT",)


def test_a_method_needing_a_token_student_refuses_a_cifar_student():
    cfg = CFG.clone()
    cfg.merge_from_list(["DISTILLER.TYPE", "DEIT"])
    with pytest.raises(IncompatibleModelError, match="DEIT needs a student with a distillation token"):
        distiller_dict["DEIT"](cifar_model_dict["resnet8"][0](num_classes=100),
                               cifar_model_dict["resnet20"][0](num_classes=100), cfg, num_data=64, num_classes=100)


@pytest.mark.parametrize("method", sorted(m for m in distiller_dict if m not in ("NONE", *TOKEN_STUDENT_METHODS)))
def test_a_distiller_built_as_mdistiller_scripts_build_it_trains_a_step(method, tmp_path, torch_single_thread):
    cfg = CFG.clone()
    cfg.merge_from_file(method_config(method))
    cfg.merge_from_list(["DISTILLER.TEACHER", "resnet20", "DISTILLER.STUDENT", "resnet8", "CRD.NCE.K", "16"])
    assert cfg.DATASET.IMAGE_SIZE == 0 and cfg.DISTILLER.TYPE == method
    torch.manual_seed(0)
    teacher = cifar_model_dict["resnet20"][0](num_classes=100)
    for stage in stages_of(distiller_dict[method].stages):  # FreeKD's prompts: stage 1's starting point
        cfg.merge_from_list([item for key, value in stage.stand_in(cfg, teacher, str(tmp_path)).items()
                             for item in (key, value)])
    student = cifar_model_dict["resnet8"][0](num_classes=100)
    distiller = distiller_dict[method](student, teacher, cfg, num_data=64, num_classes=100)
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.1)
    distiller.train()
    batch = {"image": torch.randn(4, 3, 32, 32), "target": torch.randint(0, 100, (4,)), "epoch": 1,
             "index": torch.arange(4), "contrastive_index": torch.randint(0, 64, (4, 17))}
    _, losses = distiller(**batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
