"""mdistiller: a knowledge-distillation toolkit for image classifiers."""

__version__ = "0.1.0"
