import numpy as np
import pytest

from hpa_embed.labels import HPA2018, HPA2021, get_scheme


def test_scheme_sizes_and_known_names():
    assert HPA2021.num_classes == 19 and len(HPA2021.colours) == 19
    assert HPA2018.num_classes == 28 and len(HPA2018.colours) == 28
    assert HPA2021.names[0] == "Nucleoplasm" and HPA2021.names[18] == "Negative"
    assert HPA2021.names[11] == "Mitotic spindle" and HPA2018.names[27] == "Rods & rings"
    assert len(set(HPA2021.colours)) == 19


def test_multi_hot_round_trip():
    labels = [[0, 16], [18], [3, 5, 7]]
    Y = HPA2021.to_multi_hot(labels)
    assert Y.dtype == bool and Y.shape == (3, 19)
    assert Y.sum() == 6 and Y[0, 16] and Y[1, 18] and Y[2, 7]
    assert HPA2021.from_multi_hot(Y) == labels


def test_multi_hot_refuses_out_of_scheme_label():
    with pytest.raises(ValueError, match="label 19 is outside the hpa2021 scheme"):
        HPA2021.to_multi_hot([[19]])
    assert HPA2018.to_multi_hot([[27]])[0, 27]


def test_get_scheme():
    assert get_scheme("HPA2018") is HPA2018
    assert get_scheme(HPA2021) is HPA2021
    with pytest.raises(ValueError, match="unknown class scheme"):
        get_scheme("hpa2019")
    np.testing.assert_array_equal(HPA2021.ids, np.arange(19))
