"""Segment Anything models: SAM teachers from Meta's ``segment-anything`` package and MobileSAM's
TinyViT-5M student (Kirillov et al., "Segment Anything", ICCV 2023; Zhang et al., "Faster Segment
Anything: Towards Lightweight SAM for Mobile Applications", 2023).

Names (``sam_model_dict``):

- ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``: segment_anything's ``build_sam_vit_*`` (1024 px,
  ViT-B/L/H image encoder with the 256 x 64 x 64 neck, prompt encoder, mask decoder); at another
  ``image_size`` the same parts from segment_anything's modules.
- ``sam_vit_mini``: the same SAM with a 4-block ViT of width 192 (the shapes teacher: small images).
- ``sam_tinyvit_5m``: MobileSAM's student, timm's ``tiny_vit_5m_224`` trunk whose last patch merging
  keeps its stride (1/16 of the input, 64 x 64 at 1024 px, as MobileSAM's), a neck to SAM's 256
  channels (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d), and SAM's prompt encoder and mask decoder.

Every model is a ``segment_anything.modeling.Sam`` (``image_encoder``, ``prompt_encoder``,
``mask_decoder``, ``pixel_mean`` / ``pixel_std``). :func:`mobile_sam_state_dict` renames MobileSAM's
released ``mobile_sam.pt`` (its own TinyViT's keys) to ``sam_tinyvit_5m``'s.
"""

import os
import re
from functools import partial
from typing import Callable, Dict, List, Tuple

import timm
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

from mdistiller.engine.checkpoint import load_checkpoint, load_weights, student_state_dict
from mdistiller.errors import CheckpointError, ConfigError
from mdistiller.registry import Registry

__all__ = ["EMBED_DIM", "PATCH", "TinyViTEncoder", "build_sam_model", "encoder_parameters", "is_sam_model",
           "load_sam_weights", "mobile_sam_state_dict", "sam_model_dict", "sam_state_dict"]

sam_model_dict = Registry("SAM model")

EMBED_DIM = 256  # SAM's image embedding channels
PATCH = 16       # the embedding is 1/16 of the input side
FULL_SIZE = 1024

# (width, depth, heads, global-attention blocks) of the ViT image encoders; MobileSAM / SAM settings.
VIT_SIZES = {"sam_vit_b": (768, 12, 12, (2, 5, 8, 11)), "sam_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
             "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31)), "sam_vit_mini": (192, 4, 3, (1, 3))}


def is_sam_model(name: str) -> bool:
    return name in sam_model_dict


def _sam(image_encoder: nn.Module, image_size: int) -> Sam:
    """SAM around `image_encoder`: the prompt encoder and mask decoder of segment_anything's builder."""
    side = image_size // PATCH
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(side, side),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048,
                                                               num_heads=8),
                                 transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def _vit_sam(name: str, image_size: int) -> Sam:
    """segment_anything's builder at 1024 px; its ViT at another size (window 14, or 4 for the mini ViT)."""
    if image_size == FULL_SIZE and name != "sam_vit_mini":
        return sam_model_registry[name[len("sam_"):]]()
    width, depth, heads, global_blocks = VIT_SIZES[name]
    encoder = ImageEncoderViT(img_size=image_size, patch_size=PATCH, embed_dim=width, depth=depth, num_heads=heads,
                              mlp_ratio=4, out_chans=EMBED_DIM, qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              window_size=4 if name == "sam_vit_mini" else 14, global_attn_indexes=global_blocks)
    return _sam(encoder, image_size)


for _name in VIT_SIZES:
    sam_model_dict.register(_name, partial(_vit_sam, _name))


class TinyViTEncoder(nn.Module):
    """MobileSAM's image encoder: timm's TinyViT-5M stages (the last patch merging at stride 1) and
    the neck to SAM's embedding; ``(B, 3, S, S) -> (B, 256, S/16, S/16)``."""

    def __init__(self, img_size: int = FULL_SIZE) -> None:
        super().__init__()
        trunk = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=0)
        trunk.stages[3].downsample.conv2.conv.stride = (1, 1)  # MobileSAM: 320-wide merging keeps 1/16
        self.img_size = img_size
        self.patch_embed, self.stages = trunk.patch_embed, trunk.stages
        width = trunk.num_features
        self.neck = nn.Sequential(nn.Conv2d(width, EMBED_DIM, 1, bias=False), LayerNorm2d(EMBED_DIM),
                                  nn.Conv2d(EMBED_DIM, EMBED_DIM, 3, padding=1, bias=False), LayerNorm2d(EMBED_DIM))

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.stages(self.patch_embed(x)))


@sam_model_dict.register("sam_tinyvit_5m")
def sam_tinyvit_5m(image_size: int = FULL_SIZE) -> Sam:
    """MobileSAM (``vit_t``): TinyViT-5M image encoder, SAM's prompt encoder and mask decoder."""
    return _sam(TinyViTEncoder(image_size), image_size)


def build_sam_model(name: str, image_size: int = FULL_SIZE) -> Sam:
    """The SAM model `name` for `image_size` px inputs (a multiple of 16 and, for the ViTs' windows, of 64)."""
    builder: Callable[[int], Sam] = sam_model_dict.get(name)
    if image_size < 64 or image_size % 64:
        raise ConfigError(f"SAM.IMAGE_SIZE must be a multiple of 64 (1024 for SAM's weights), got {image_size}.")
    return builder(image_size)


def encoder_parameters(model: Sam) -> int:
    """Parameters of the image encoder (MobileSAM's comparison: ViT-H 632M, TinyViT 5.78M)."""
    return sum(p.numel() for p in model.image_encoder.parameters())


# -- MobileSAM's mobile_sam.pt -> sam_tinyvit_5m ----------------------------------------------
# MobileSAM's TinyViT (mobile_sam/modeling/tiny_vit_sam.py) names Conv2d_BN parts c / bn, puts each
# stage's patch merging at the end of the previous layer and the stem in patch_embed.seq; timm's
# TinyViT names them conv / bn, puts the merging at the start of its stage, the stem in conv1 / conv2.
_RENAMES: List[Tuple[str, str]] = [
    (r"^image_encoder\.patch_embed\.seq\.0\.", "image_encoder.patch_embed.conv1."),
    (r"^image_encoder\.patch_embed\.seq\.2\.", "image_encoder.patch_embed.conv2."),
    (r"^image_encoder\.layers\.(\d)\.blocks\.", r"image_encoder.stages.\1.blocks."),
]
_DROPPED = ("image_encoder.norm_head.", "image_encoder.head.")  # the ImageNet classifier MobileSAM keeps


def _rename(key: str) -> str:
    merging = re.match(r"^image_encoder\.layers\.(\d)\.downsample\.(.*)$", key)
    if merging:
        key = f"image_encoder.stages.{int(merging.group(1)) + 1}.downsample.{merging.group(2)}"
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return re.sub(r"\.c\.(weight|bias)$", r".conv.\1", key)


def mobile_sam_state_dict(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """MobileSAM's ``mobile_sam.pt`` state dict with ``sam_tinyvit_5m``'s keys (prompt encoder, mask
    decoder and neck unchanged; the classifier head dropped)."""
    return {_rename(k): v for k, v in state.items() if not k.startswith(_DROPPED)}


def sam_state_dict(state: Dict) -> Dict[str, Tensor]:
    """The SAM weights in a checkpoint: a student file or full checkpoint of ours (``"model"``), SAM's
    official files (a plain state dict, e.g. ``sam_vit_h_4b8939.pth``) or MobileSAM's ``mobile_sam.pt``
    (renamed by :func:`mobile_sam_state_dict`)."""
    weights = student_state_dict(state) if "model" in state else state
    if any(k.startswith("image_encoder.layers.") for k in weights):
        return mobile_sam_state_dict(weights)
    return weights


def load_sam_weights(model: Sam, spec: str, what: str) -> None:
    """The checkpoint file ``spec`` (:func:`sam_state_dict`) into ``model``, strictly."""
    if not spec or not os.path.isfile(spec):
        raise CheckpointError(f"{what}: weights file '{spec}' not found; give SAM's checkpoint (sam_vit_h_4b8939.pth), "
                              "mobile_sam.pt or a trained run's student_best.")
    load_weights(model, sam_state_dict(load_checkpoint(spec)), f"{what} {spec}")
