import numpy as np

from hpa_embed.analysis import label_statistics
from hpa_embed.io import LabelTable
from hpa_embed.labels import HPA2018, HPA2021


def test_label_statistics_hand_counted():
    table = LabelTable(
        ["a", "b", "c", "d", "e"], [[0, 16], [0], [0, 16], [11, 13, 16], [18]], HPA2021
    )
    stats = label_statistics(table, top=2)
    assert stats.n_images == 5
    counts = dict(zip(stats.class_counts["class_id"], stats.class_counts["images"]))
    assert counts[0] == 3 and counts[16] == 3 and counts[11] == 1 and counts[18] == 1
    assert counts[5] == 0 and sum(counts.values()) == 9
    assert stats.labels_per_image.to_dict() == {1: 2, 2: 2, 3: 1}
    assert stats.n_combinations == 4
    assert stats.top_combinations["labels"].tolist()[0] == "0|16"
    assert stats.top_combinations["images"].tolist()[0] == 2
    assert stats.top_combinations["names"].tolist()[0] == "Nucleoplasm + Cytosol"
    np.testing.assert_allclose(stats.top_combinations["fraction"].iloc[0], 0.4)
    text = stats.to_text()
    assert "5 images" in text and "4 distinct label combinations" in text


def test_label_statistics_2018_scheme():
    stats = label_statistics(LabelTable(["a", "b"], [[27], [27, 25]], HPA2018))
    assert len(stats.class_counts) == 28
    assert stats.class_counts.set_index("class_id").loc[27, "images"] == 2
    assert stats.top_combinations["names"].tolist() == ["Rods & rings", "Cytosol + Rods & rings"]
