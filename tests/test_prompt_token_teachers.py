"""FreeKD / AFPKD stage 1 inside token teachers (timm models behind TimmFeatureModel, torchvision's
ViT and Swin behind HookedFeatureModel; 32 px).

The prompt of a distilled map replaces the output of the block (ViT, DeiT, Mixer, ResMLP) or stage
(Swin, ConvNeXt) the adapter taps: the test reads that output with its own hook, puts it on the grid by hand
(tokens after the prefix, row-major; Swin's NHWC permuted), computes FreeKD's stage-1 map with
PyWavelets (tests/helpers.py) and checks that the next module receives exactly that, in the model's
layout, with the class / distillation / register tokens unchanged bit for bit. Only the prompts get
gradients. The slow part trains stage 1 through the engine and then stage 2 from the written file.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from helpers import assert_ok, pywt_prompted_map
from mdistiller.distillers.frequency_prompts import build_prompts, prompt_path
from mdistiller.engine.cfg import build_cfg
from mdistiller.engine.prompt_learning import PromptedTeacher
from mdistiller.models.adapter import HookedFeatureModel, TimmFeatureModel
from mdistiller.models.external import build_external_model
from tiny_models import SIZE, TINY_VIT, tiny


def tiny_resmlp() -> torch.nn.Module:
    """ResMLP (timm's Mixer with ResBlock): its Affine norms are the identity at initialisation."""
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    model = MlpMixer(img_size=SIZE, patch_size=4, num_blocks=4, embed_dim=32, mlp_ratio=4, block_layer=ResBlock,
                     norm_layer=Affine, num_classes=10)
    return TimmFeatureModel(model, "resmlp", SIZE)


def torchvision_vit() -> torch.nn.Module:
    """torchvision's ViT behind the hooked adapter (its class token named, its encoder layers tapped)."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=SIZE, patch_size=4, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    return HookedFeatureModel(model, "tv_vit", SIZE, [f"encoder.layers.encoder_layer_{i}" for i in range(4)],
                              "token", num_prefix_tokens=1)


def torchvision_swin() -> torch.nn.Module:
    """torchvision's Swin (NHWC stages) behind the hooked adapter."""
    from torchvision.models import SwinTransformer

    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                            window_size=[2, 2], num_classes=10)
    return HookedFeatureModel(model, "tv_swin", SIZE, [f"features.{i}" for i in (1, 3, 5, 7)], "token")


INDICES = [2, 3]  # FREEKD's default NUM_STAGES 2 of the four taps
# case -> (tiny family, (timm name, kwargs) or builder; the tapped modules, the modules receiving them,
#          layout of the tapped outputs, prefix tokens)
BLOCKS = ["model.blocks.2", "model.blocks.3"]
CASES = {
    "vit": ("vit", BLOCKS, ["model.blocks.3", "model.norm"], "NLC", 1),
    "deit_distilled": ("deit_distilled", BLOCKS, ["model.blocks.3", "model.norm"], "NLC", 2),
    "vit_registers": (("timm:vit_tiny_patch16_224", dict(TINY_VIT, reg_tokens=4)), BLOCKS,
                      ["model.blocks.3", "model.norm"], "NLC", 5),
    "swin": ("swin", ["model.layers.2", "model.layers.3"], ["model.layers.3", "model.norm"], "NHWC", 0),
    "convnext": ("convnext", ["model.stages.2", "model.stages.3"], ["model.stages.3", "model.norm_pre"], "NCHW", 0),
    "mixer": ("mixer", BLOCKS, ["model.blocks.3", "model.norm"], "NLC", 0),
    "resmlp": (tiny_resmlp, BLOCKS, ["model.blocks.3", "model.norm"], "NLC", 0),
    "torchvision_vit": (torchvision_vit, [f"model.encoder.layers.encoder_layer_{i}" for i in (2, 3)],
                        ["model.encoder.layers.encoder_layer_3", "model.encoder.ln"], "NLC", 1),
    "torchvision_swin": (torchvision_swin, ["model.features.5", "model.features.7"],
                         ["model.features.6", "model.norm"], "NHWC", 0),
}


def build_teacher(spec) -> torch.nn.Module:
    torch.manual_seed(0)
    if callable(spec):
        return spec().eval()
    if isinstance(spec, tuple):
        return build_external_model(spec[0], 10, SIZE, spec[1]).eval()
    return tiny(spec, 10).eval()


def as_grid(value: torch.Tensor, layout: str, prefix: int) -> torch.Tensor:
    """The (N, C, H, W) map a tapped output holds, by hand."""
    if layout == "NLC":
        n, length, channels = value.shape
        side = int(round((length - prefix) ** 0.5))
        return value[:, prefix:].reshape(n, side, side, channels).permute(0, 3, 1, 2)
    return value.permute(0, 3, 1, 2) if layout == "NHWC" else value


@pytest.mark.parametrize("case", sorted(CASES))
def test_stage1_prompts_the_tapped_grid_and_writes_it_back(case):
    spec, taps, receivers, layout, prefix = CASES[case]
    teacher = build_teacher(spec)
    tapped, received = {}, {}
    for name in taps:  # registered before the prompt's hook: sees the block's own output
        teacher.get_submodule(name).register_forward_hook(
            lambda _m, _a, out, name=name: tapped.__setitem__(name, out.detach().clone()))
    for name in receivers:
        teacher.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: received.__setitem__(name, args[0].detach().clone()))
    _, feats = teacher(torch.zeros(1, 3, SIZE, SIZE))
    cfg = build_cfg(None, ["DISTILLER.TYPE=FREEKD"])
    prompts = build_prompts([feats["feats"][i].shape[1] for i in INDICES], cfg.FREEKD)
    torch.manual_seed(1)
    for prompt in prompts:  # masks far from 1/2 so that a wrong band or grid order shows
        prompt.tokens.data.normal_(0.0, 0.5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    model = PromptedTeacher(teacher, prompts, INDICES, SIZE).train()
    image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    _, losses = model(image=image, target=torch.tensor([0, 1]))

    for k, (tap, receiver) in enumerate(zip(taps, receivers)):
        value, got = tapped[tap], received[receiver]
        assert got.shape == value.shape and got.dtype == value.dtype, (tap, got.shape, value.shape)
        if prefix:
            assert torch.equal(got[:, :prefix], value[:, :prefix]), f"{tap}: prefix tokens changed"
        grid = as_grid(value, layout, prefix).double().numpy()
        expected = pywt_prompted_map(grid, prompts[k].tokens.detach().double().numpy())
        assert not np.allclose(expected, grid, rtol=1e-3, atol=1e-3)  # the prompt changes the map
        np.testing.assert_allclose(as_grid(got, layout, prefix).double().numpy(), expected, rtol=1e-4, atol=1e-4)

    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in prompts.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.e2e
@pytest.mark.slow
def test_vit_teacher_stage1_then_stage2_through_train_py_on_digits(tmp_path):
    """tools/train.py on the digits with FREEKD and a tiny ViT teacher (configs/digits/hetero/vit_cnn):
    stage 1 learns prompts inside the ViT (1 epoch), stage 2 trains resnet8 from them (1 epoch)."""
    teacher_file = tmp_path / "vit.pth"
    torch.manual_seed(0)
    kwargs = dict(patch_size=4, embed_dim=64, depth=4, num_heads=4)  # vit_teacher.yaml's
    torch.save({"model": build_external_model("timm:vit_tiny_patch16_224", 10, 16, kwargs).state_dict()},
               teacher_file)
    config = os.path.join(REPO_ROOT, "configs", "digits", "hetero", "vit_cnn", "freekd.yaml")
    opts = [f"LOG.PREFIX={tmp_path}", f"DISTILLER.TEACHER_WEIGHTS={teacher_file}", "SOLVER.EPOCHS=1",
            "FREEKD.PROMPT_EPOCHS=1", "DATASET.TRAIN_FRACTION=0.1", "EXPERIMENT.NAME=freekd_vit",
            "LOG.PROGRESS_BAR=False"]
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--cfg", config, *opts],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert_ok(result)
    assert "FREEKD stage 1" in result.stdout
    cfg = build_cfg(config, opts)
    record = torch.load(prompt_path(cfg, "FREEKD"), weights_only=True)
    assert record["teacher"] == "timm:vit_tiny_patch16_224" and record["epoch"] == 1
    assert record["feature_indices"] == [2, 3] and record["channels"] == [64, 64]
    run = tmp_path / cfg.EXPERIMENT.PROJECT / "freekd_vit"
    state = torch.load(run / "latest", weights_only=True)["model"]
    for key, value in record["prompts"].items():  # stage 2 trained with the learned prompts, frozen
        torch.testing.assert_close(state[f"prompts.{key}"], value)
    assert '"loss_kd"' in (run / "metrics.jsonl").read_text()
