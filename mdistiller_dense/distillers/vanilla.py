"""The student alone (DISTILLER.TYPE NONE): its task losses only; also how teachers are trained."""

from mdistiller_dense.distillers._base import DenseDistiller, register_dense_distiller


@register_dense_distiller("NONE")
class DenseVanilla(DenseDistiller):
    """Plain training of a torchvision detector or segmenter."""

    def __init__(self, student, teacher, cfg, **info) -> None:
        super().__init__(student, None, cfg, **info)
