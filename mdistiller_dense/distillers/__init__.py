"""Dense distillers: one file per method (its config defaults beside its class); auto-imported."""

import importlib
import pkgutil

from mdistiller_dense.distillers._base import (DenseBatch, DenseDistiller, dense_distiller_dict,
                                               dense_method_defaults, register_dense_distiller)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DenseBatch", "DenseDistiller", "dense_distiller_dict", "dense_method_defaults", "register_dense_distiller"]
