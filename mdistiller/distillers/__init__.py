"""Distillers: one module per method, each registering its class and config section.

Every module in this package is imported here, so adding a method is adding one file.
"""

import importlib
import pkgutil

from mdistiller.distillers._base import Distiller, distiller_dict, method_defaults, method_rules, register_distiller

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Distiller", "distiller_dict", "method_defaults", "method_rules", "register_distiller"]
