"""rmkd.widgets: the browsers react to their selectors (no browser, no kernel)."""

import base64

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from test_plots import PNG, make_detail

from rmkd.data import CocoDetection, make_synthetic
from rmkd.models import build_detector
from rmkd.widgets import InstanceBrowser, LevelSelector, candidate_table


def _shown_png(output) -> bytes:
    assert len(output.outputs) == 1
    data = base64.b64decode(output.outputs[0]["data"]["image/png"])
    assert data.startswith(PNG)
    return data


def test_level_selector_follows_level_and_image():
    details = {7: make_detail(7, seed=0), 9: make_detail(9, seed=1)}
    w = LevelSelector(details)
    assert w.image.value == 7 and w.level.value == 0
    assert [label for label, _ in w.level.options] == ["P3 (stride 8)", "P4 (stride 16)", "P5 (stride 32)"]
    first_png, first_stats = _shown_png(w.output), w.stats.value
    m = details[7].maps[0]
    assert f"Pearson r = <b>{np.corrcoef(m['f_dif'].ravel(), m['p_dif'].ravel())[0, 1]:.3f}</b>" in first_stats

    w.level.value = 2
    assert w.renders == 2
    assert w.stats.value != first_stats and "P5" in w.stats.value
    m = details[7].maps[2]
    assert f"Pearson r = <b>{np.corrcoef(m['f_dif'].ravel(), m['p_dif'].ravel())[0, 1]:.3f}</b>" in w.stats.value
    assert _shown_png(w.output) != first_png

    level_stats = w.stats.value
    w.image.value = 9  # the level is kept, the maps are the other image's
    assert w.renders == 3 and w.level.value == 2
    assert w.stats.value != level_stats and "image 9" in w.stats.value

    single = LevelSelector(make_detail(3))
    assert single.image.options == (("image 3", 3),)
    assert "text/plain" in single._repr_mimebundle_()


def test_level_selector_keeps_one_colour_scale_per_image(monkeypatch):
    from rmkd import plots

    drawn = []
    original = plots.plot_gap_panels

    def spy(detail, levels=None, **kwargs):
        fig = original(detail, levels, **kwargs)
        drawn.append((detail.image_id, levels, [ax.collections[0].norm.vmax for ax in fig.axes[1:4]]))
        return fig

    monkeypatch.setattr(plots, "plot_gap_panels", spy)
    details = {7: make_detail(7, seed=0), 9: make_detail(9, seed=1)}
    details[7].maps[2]["p_dif"] = details[7].maps[2]["p_dif"] * 0.01  # a quiet coarse level
    w = LevelSelector(details)
    w.level.value = 2
    w.image.value = 9
    scales = {k: [plots.gap_scales(d)[key] for key in ("f_dif", "p_dif", "product")] for k, d in details.items()}
    # every level of an image drawn on that image's scale over all its levels, not the level's own max
    assert drawn == [(7, [0], scales[7]), (7, [2], scales[7]), (9, [2], scales[9])]
    assert scales[7][1] > details[7].maps[2]["p_dif"].max()


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    # The default GroupNorm heads: one 64 px image has 1x1 levels, where a 32-wide head has
    # one value per group (rmkd's GroupNorm handles the batch of one that inspection runs).
    kw = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64)
    teacher = build_detector("retinanet", "resnet18", 10, fpn_channels=64, head_convs=1, **kw)
    student = build_detector("retinanet", "resnet18", 10, fpn_channels=32, head_convs=1, **kw)
    return teacher, student


def test_instance_browser_follows_image_and_instance(tiny_data, tiny_pair):
    paths = make_synthetic(tiny_data, num_train=24, num_val=8, seed=3, progress=False)  # reuses the fixture's files
    ds = CocoDetection(paths["val"]["images"], paths["val"]["annotations"])
    teacher, student = tiny_pair
    b = InstanceBrowser(teacher, student, ds)
    assert b.image.max == len(ds) - 1 and b.renders == 1
    assert b.adapter is not None and not isinstance(b.adapter, str)  # fitted once, reused
    gt_counts = [len(ds[i][1]["labels"]) for i in range(len(ds))]

    def check(index):
        detail = b.details[ds.ids[index]]
        assert b.detail is detail and detail.image_id == ds.ids[index]
        assert len(b.instance.options) == gt_counts[index]
        for (label, g), (_, row) in zip(b.instance.options, detail.gt.iterrows()):
            n = int((detail.candidates["gt_index"] == g).sum())
            name = ds.class_names[int(row["label"]) - 1]
            assert label == f"#{g} '{name}' ({n} candidate{'' if n == 1 else 's'})"

    check(0)
    # an image with several GTs, another whose first GT has candidates
    other = next(i for i in range(1, len(ds)) if gt_counts[i] >= 2)
    before_table, before_png = b.table.value, _shown_png(b.output)
    b.image.value = other
    check(other)
    assert b.renders == 2 and b.instance.value == 0
    assert b.table.value != before_table and f"image {ds.ids[other]}, GT #0" in b.table.value
    assert _shown_png(b.output) != before_png

    # the table lists GT #0's candidates sorted by teacher rank
    table = candidate_table(b.detail, 0)
    assert len(table) > 0 and list(table["t_rank"]) == sorted(table["t_rank"])
    assert table.shape[0] == int((b.detail.candidates["gt_index"] == 0).sum())
    for anchor in table["anchor"]:
        assert f"<td>{anchor}</td>" in b.table.value

    table_0 = b.table.value
    b.instance.value = 1
    assert b.renders == 3
    assert b.table.value != table_0 and "GT #1" in b.table.value
    for anchor in candidate_table(b.detail, 1)["anchor"]:
        assert f"<td>{anchor}</td>" in b.table.value

    # back to the first image: served from the cache, same detail object
    cached = b.details[ds.ids[0]]
    b.image.value = 0
    assert b.detail is cached and len(b.details) == 2
    assert "text/plain" in b._repr_mimebundle_()


def test_instance_browser_uses_given_details_and_shows_images_without_gt(tiny_data):
    paths = make_synthetic(tiny_data, num_train=24, num_val=8, seed=3, progress=False)
    ds = CocoDetection(paths["val"]["images"], paths["val"]["annotations"])
    empty = make_detail(ds.ids[0])
    empty.gt = empty.gt.iloc[:0]
    empty.candidates = empty.candidates.iloc[:0]
    # no models: an image found in `details` must not be recomputed
    b = InstanceBrowser(None, None, ds, details={ds.ids[0]: empty})
    assert b.detail is empty and b.instance.options == () and b.instance.value is None
    assert "no GT" in b.table.value and b.renders == 1
    _shown_png(b.output)
