"""An out-of-tree method and model for mdistiller (docs/extending.md walks through it).

Importing this package registers the distiller ``LOGIT_MSE`` (with its config section) and the model
``tiny_cnn``; a config names it in ``EXPERIMENT.PLUGINS`` (or ``tools/train.py --plugin my_kd_plugin``)
and the directory holding it must be importable (``PYTHONPATH=examples/my_kd_plugin`` or
``pip install -e examples/my_kd_plugin``).
"""

from my_kd_plugin import logit_mse, tiny_cnn  # noqa: F401  (each registers itself)
