"""Models named ``timm:<name>`` or ``torchvision:<name>``, built and wrapped in the feature adapter.

``build_external_model("timm:deit_tiny_patch16_224", num_classes=100, image_size=32,
kwargs={"patch_size": 4})`` creates the model with randomly initialised weights and the dataset's
class count, and returns it behind :mod:`mdistiller.models.adapter`'s contract. An unknown name is
refused with the closest names from timm's or torchvision's own lists.

Where the taps are, unless ``feature_modules`` names them:

- timm: ``forward_intermediates`` (the four stages of a hierarchical model, four evenly spaced
  blocks of a ViT or Mixer);
- torchvision ResNets: ``layer1`` .. ``layer4``; Swin and ConvNeXt: ``features.1/3/5/7`` (Swin's NHWC
  maps permuted); ViT: four evenly spaced encoder layers (class token dropped); any other model with
  a ``features`` sequence (MobileNet, EfficientNet, VGG): the last module of each of its last four
  strides, found by one probe forward.
"""

import difflib
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mdistiller.errors import IncompatibleModelError, UnknownNameError
from mdistiller.models.adapter import HookedFeatureModel, TimmFeatureModel, evenly_spaced

__all__ = ["TIMM_PREFIX", "TORCHVISION_PREFIX", "is_external_name", "check_external_name", "build_external_model", "pretrained_spec"]

TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"


def is_external_name(name: str) -> bool:
    """True for ``timm:<name>`` and ``torchvision:<name>``."""
    return name.startswith((TIMM_PREFIX, TORCHVISION_PREFIX))


def _unknown(kind: str, name: str, known: Sequence[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(kind + c for c in close)}?" if close else ""
    return UnknownNameError(
        f"Unknown model '{kind}{name}'.{hint} {kind[:-1]} lists its models with "
        + ("timm.list_models()." if kind == TIMM_PREFIX else "torchvision.models.list_models().")
    )


def check_external_name(name: str) -> None:
    """UnknownNameError (with the library's closest names) unless timm / torchvision has `name`."""
    if name.startswith(TIMM_PREFIX):
        import timm

        bare = name[len(TIMM_PREFIX):]
        if not timm.is_model(bare):
            raise _unknown(TIMM_PREFIX, bare, timm.list_models())
        if "." in bare and bare not in timm.list_pretrained(bare):  # a pretrained tag timm does not have
            raise _unknown(TIMM_PREFIX, bare, timm.list_pretrained(bare.split(".")[0] + ".*"))
    elif name.startswith(TORCHVISION_PREFIX):
        from torchvision import models

        known = models.list_models(module=models)
        if name[len(TORCHVISION_PREFIX):] not in known:
            raise _unknown(TORCHVISION_PREFIX, name[len(TORCHVISION_PREFIX):], known)


def pretrained_spec(name: str) -> str:
    """The weights spec of a model's default pretrained weights: ``timm:pretrained``, or
    ``torchvision:<Enum>.DEFAULT``."""
    if name.startswith(TIMM_PREFIX):
        return "timm:pretrained"
    from torchvision import models

    return f"torchvision:{models.get_model_weights(name[len(TORCHVISION_PREFIX):]).__name__}.DEFAULT"


def build_external_model(name: str, num_classes: int, image_size: int,
                         kwargs: Optional[Dict[str, Any]] = None,
                         feature_modules: Sequence[str] = ()) -> nn.Module:
    """A ``timm:`` / ``torchvision:`` model with ``num_classes`` outputs behind the feature adapter."""
    kwargs = dict(kwargs or {})
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], num_classes, image_size, kwargs, feature_modules)
    if name.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(name[len(TORCHVISION_PREFIX):], num_classes, image_size, kwargs,
                                  feature_modules)
    raise ValueError(f"'{name}' is not a timm: or torchvision: model name")


def _build_timm(name: str, num_classes: int, image_size: int, kwargs: Dict[str, Any],
                feature_modules: Sequence[str]) -> nn.Module:
    import timm
    from timm.layers import PatchEmbed

    check_external_name(TIMM_PREFIX + name)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None and isinstance(getattr(model, "stem", None), PatchEmbed):
        patch_embed = model.stem   # MLP-Mixer, ResMLP, gMLP name their patch embedding `stem`
    fixed_size = built_size(model, patch_embed)
    if fixed_size not in (None, (image_size, image_size)) and "img_size" not in kwargs:
        # a ViT / Swin / Mixer / LeViT / MaxViT built for 224 px: its position grid, attention biases or
        # windows follow the data's image size
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size,
                                  **kwargs)
    full_name = TIMM_PREFIX + name
    if feature_modules:
        return HookedFeatureModel(model, full_name, image_size, feature_modules,
                                  kind="token" if patch_embed is not None else "cnn",
                                  num_prefix_tokens=getattr(model, "num_prefix_tokens", None))
    if not hasattr(model, "forward_intermediates"):
        raise IncompatibleModelError(
            f"{full_name} has no forward_intermediates in this timm: name its stage modules with "
            "MODEL.STUDENT_FEATURES / MODEL.TEACHER_FEATURES"
        )
    return TimmFeatureModel(model, full_name, image_size)


def built_size(model: nn.Module, patch_embed: Optional[nn.Module]) -> Optional[Tuple[int, int]]:
    """The (h, w) a timm model fixed at construction, or None when its class takes no ``img_size``
    (a CNN runs at any size): its patch embedding's, else its default configuration's input size."""
    classes = type(model).__mro__[:type(model).__mro__.index(nn.Module)]  # LevitDistilled's is Levit's
    if not any("img_size" in inspect.signature(cls.__init__).parameters for cls in classes):
        return None
    fixed = getattr(patch_embed, "img_size", None)
    if fixed is None:
        fixed = model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
    return tuple(fixed) if isinstance(fixed, (tuple, list)) else (fixed, fixed)


def _build_torchvision(name: str, num_classes: int, image_size: int, kwargs: Dict[str, Any],
                       feature_modules: Sequence[str]) -> nn.Module:
    import torchvision
    from torchvision import models

    check_external_name(TORCHVISION_PREFIX + name)
    if name.startswith("vit_"):  # torchvision's ViT fixes its position grid at construction
        kwargs.setdefault("image_size", image_size)
    model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    swin = isinstance(model, torchvision.models.SwinTransformer)
    vit = isinstance(model, torchvision.models.VisionTransformer)
    modules = list(feature_modules) or _torchvision_stage_modules(model, image_size)
    return HookedFeatureModel(model, TORCHVISION_PREFIX + name, image_size, modules,
                              kind="token" if swin or vit else "cnn",
                              num_prefix_tokens=1 if vit else None, channels_last_maps=swin)


def _torchvision_stage_modules(model: nn.Module, image_size: int) -> List[str]:
    import torchvision

    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    if isinstance(model, (torchvision.models.SwinTransformer, torchvision.models.ConvNeXt)):
        return [f"features.{i}" for i in (1, 3, 5, 7)]
    if isinstance(model, torchvision.models.VisionTransformer):
        layers = [name for name, _ in model.encoder.layers.named_children()]
        return [f"encoder.layers.{layers[i]}" for i in evenly_spaced(len(layers))]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return _last_module_per_stride(features, image_size)
    raise IncompatibleModelError(
        f"no default stage taps for torchvision:{type(model).__name__}: name them with "
        "MODEL.STUDENT_FEATURES / MODEL.TEACHER_FEATURES"
    )


def _last_module_per_stride(features: nn.Sequential, image_size: int, taps: int = 4) -> List[str]:
    """``features.<i>`` for the last child at each output size, the deepest ``taps`` sizes."""
    last_at_size: Dict[int, str] = {}
    x = torch.zeros(1, 3, image_size, image_size)
    was_training = features.training
    features.eval()
    with torch.no_grad():
        for child_name, child in features.named_children():
            x = child(x)
            last_at_size[x.shape[-1]] = f"features.{child_name}"
    features.train(was_training)
    return list(last_at_size.values())[-taps:]
