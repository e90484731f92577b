"""Feature capture through forward hooks on named modules: the models are not edited.

A captured module's output is kept as it is; :func:`as_levels` turns a dict output (the FPN's
``OrderedDict`` of levels, the segmentation backbone's ``{"out": ...}``) or a tensor into a list.
"""

import difflib
from typing import Dict, List, Sequence, Union

from torch import Tensor, nn

from mdistiller.errors import ConfigError

__all__ = ["FeatureCapture", "as_levels", "default_feature_modules"]


def default_feature_modules(kind: str) -> List[str]:
    """The FPN output for detectors, the last backbone stage for segmenters."""
    if kind in ("fcos", "retinanet", "fasterrcnn", "reppoints"):
        return ["backbone.fpn"]
    return ["backbone.layer4"]


class FeatureCapture:
    """Forward hooks on the modules ``names`` of ``model``; :attr:`outputs` maps each name to its
    latest output. :meth:`pop` returns them in the order of ``names`` and forgets them."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules:
                close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
                hint = f" Closest: {', '.join(close)}." if close else ""
                raise ConfigError(f"No module named '{name}' in {type(model).__name__}.{hint}")
        self.names = list(names)
        self.outputs: Dict[str, object] = {}
        self.handles = [modules[name].register_forward_hook(self._keep(name)) for name in self.names]

    def _keep(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            self.outputs[name] = output

        return hook

    def pop(self) -> List[object]:
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"modules {missing} did not run in the last forward")
        outputs = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def as_levels(outputs: Sequence[Union[Tensor, Dict[str, Tensor]]]) -> List[Tensor]:
    """Captured outputs flattened to a list of maps: a dict contributes its values in order."""
    levels: List[Tensor] = []
    for output in outputs:
        if isinstance(output, dict):
            levels += list(output.values())
        elif isinstance(output, (list, tuple)):
            levels += list(output)
        else:
            levels.append(output)
    return levels
