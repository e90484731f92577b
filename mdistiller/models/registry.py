"""The model registries: every architecture registers itself where it is defined (as timm's
``@register_model``), in the registry of the inputs it is built for.

``cifar_models`` (32x32 inputs: CIFAR-100, digits and any dataset without a family of its own),
``tiny_imagenet_models`` (64x64) and ``imagenet_models`` (224x224). A CIFAR / Tiny-ImageNet
constructor takes ``num_classes``, an ImageNet one ``pretrained``. A model registers with the path
of its trained teacher checkpoint where one is published; ``cifar_model_dict`` and the others in
:mod:`mdistiller.models` are views of these registries in MDistiller's form.
"""

from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

from torch import nn

from mdistiller.registry import Registry

__all__ = ["ModelDict", "ModelRegistry", "cifar_models", "imagenet_models", "models_for", "tiny_imagenet_models"]

ModelFn = Callable[..., nn.Module]


class ModelRegistry(Registry):
    """A :class:`~mdistiller.registry.Registry` of model constructors, each with the path of its
    trained teacher checkpoint (None when there is none)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.checkpoints: Dict[str, Optional[str]] = {}

    def register(self, name: Optional[str] = None, obj: Optional[ModelFn] = None, checkpoint: Optional[str] = None):
        """``@models.register("NAME", checkpoint=path)`` or ``models.register("NAME", fn)``."""

        def add(fn: ModelFn) -> ModelFn:
            key = name if name is not None else fn.__name__
            Registry.register(self, key, fn)
            self.checkpoints[key] = checkpoint
            return fn

        return add(obj) if obj is not None else add

    def checkpoint(self, name: str) -> Optional[str]:
        """The teacher checkpoint path of `name` (UnknownNameError for an unregistered name)."""
        self.get(name)
        return self.checkpoints[name]


class ModelDict(Mapping):
    """MDistiller's ``name -> (constructor, teacher checkpoint path or None)``: a live view of a
    :class:`ModelRegistry`, so models registered later (by a plugin) appear in it."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def __getitem__(self, name: str) -> Tuple[ModelFn, Optional[str]]:
        return self.registry.get(name), self.registry.checkpoints[name]

    def __contains__(self, name: object) -> bool:
        return name in self.registry

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)


cifar_models = ModelRegistry("CIFAR model")
tiny_imagenet_models = ModelRegistry("Tiny-ImageNet model")
imagenet_models = ModelRegistry("ImageNet model")

# Datasets whose models are not the CIFAR ones (every other dataset, built in or a plugin's, uses those).
_MODELS_OF_DATASET = {"imagenet": imagenet_models, "tiny_imagenet": tiny_imagenet_models}


def models_for(dataset: str) -> ModelRegistry:
    """The registry of the models built for `dataset` (DATASET.TYPE)."""
    return _MODELS_OF_DATASET.get(dataset, cifar_models)
