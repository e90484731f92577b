import pytest

from mdistiller.distillers import distiller_dict
from mdistiller.errors import UnknownNameError
from mdistiller.registry import Registry


def test_register_get_and_unknown_name():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha():
        return 1

    reg.register("beta", obj=2)
    assert reg["alpha"] is alpha and reg.get("beta") == 2 and "alpha" in reg and len(reg) == 2
    with pytest.raises(UnknownNameError, match=r"Unknown widget 'alpah'. Did you mean alpha\?.*Known: alpha, beta"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha", obj=3)


def test_distiller_dict_has_mdistiller_names():
    assert "NONE" in distiller_dict and "KD" in distiller_dict
    with pytest.raises(UnknownNameError, match="Known: .*KD"):
        distiller_dict["KDD"]
