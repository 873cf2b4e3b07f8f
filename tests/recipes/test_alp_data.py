"""ALP training data: ALPs as image-level labels keep the phrase and drop the box."""

from __future__ import annotations

import json

from omniseg.recipes.alp_data import ALPConfig, alp_train_dataset, with_alps
from omniseg.recipes.data import DataConfig, open_source, training_view


def _alps(tmp_path, rs):
    path = tmp_path / "alps.jsonl"
    rows = [{"image_id": rs.records[k].image_id, "phrase": p, "box": [3, 4, 40, 50], "box_quality": "approximate",
             "source": "alp"} for k, p in ((0, "crimson disk"), (1, "green star"), (1, "small cross"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_alps_as_image_labels_drop_only_the_alp_boxes(tmp_path):
    data = DataConfig(train_num_images=4, image_size=128, split="voc-like", novel_supervision="alp", flip=False)
    rs, _ = open_source("synth", 4, 0, 128, progress=False)
    path = _alps(tmp_path, rs)
    boxed = with_alps(training_view(rs, data), rs, data, ALPConfig(path=str(path)))
    labels = with_alps(training_view(rs, data), rs, data, ALPConfig(path=str(path), as_image_labels=True))
    for a, b in zip(boxed.records, labels.records):
        assert [i.text for i in a.instances] == [i.text for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            if x.box_quality == "approximate":
                assert y.box is None and y.mask is None and y.category_id is None
            else:  # the split's exact boxes and masks are untouched
                assert x == y
    assert sum(i.box is None for r in labels.records for i in r.instances) == 3
    # in the collated targets: the phrases are there without boxes (image-level labels)
    ds = alp_train_dataset(data, ALPConfig(path=str(path), as_image_labels=True), progress=False)
    t = ds.raw_sample(1).targets
    for phrase in ("green star", "small cross"):
        i = t.texts.index(phrase)
        assert not t.has_box[i] and not t.has_mask[i] and t.is_thing[i]
