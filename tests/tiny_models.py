"""Tiny timm models for 32x32 CPU tests (sizes from shared/specs/HETERO.md section 7), behind the
feature adapter; ``build_external_model`` names where timm's entry point takes the shrinking kwargs,
the Mixer class built directly where it does not."""

from torch import nn

from mdistiller.models.adapter import TimmFeatureModel
from mdistiller.models.external import build_external_model

SIZE = 32
TINY_VIT = dict(patch_size=4, embed_dim=48, depth=4, num_heads=3)
TINY_SWIN = dict(window_size=2, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
TINY_CONVNEXT = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))
TINY_RESNET = dict(stem_width=8, channels=(16, 32, 64, 128))


def tiny_mixer(num_classes: int) -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(img_size=SIZE, patch_size=4, num_blocks=4, embed_dim=64, num_classes=num_classes)
    return TimmFeatureModel(model, "mixer", SIZE)


def tiny(family: str, num_classes: int) -> nn.Module:
    """A tiny model of ``family``: vit, deit_distilled, swin, convnext, mixer, resnet."""
    if family == "mixer":
        return tiny_mixer(num_classes)
    name, kwargs = {
        "vit": ("timm:vit_tiny_patch16_224", TINY_VIT),
        "deit_distilled": ("timm:deit_tiny_distilled_patch16_224", TINY_VIT),
        "swin": ("timm:swin_tiny_patch4_window7_224", TINY_SWIN),
        "convnext": ("timm:convnext_atto", TINY_CONVNEXT),
        "resnet": ("timm:resnet10t", TINY_RESNET),
    }[family]
    return build_external_model(name, num_classes, SIZE, kwargs)
