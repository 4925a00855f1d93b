"""Notebook browsers for the two observations (ipywidgets; JupyterLab or classic).

- :class:`InstanceBrowser`: pick an image and one of its GTs; see the GT's candidate
  anchors coloured by teacher and student rank (:func:`rmkd.plots.plot_candidates`)
  and both score lists side by side.
- :class:`LevelSelector`: pick an image and an FPN level; see F_dif, P_dif and their
  product (:func:`rmkd.plots.plot_gap_panels`) with the level's gap statistics.

Both show a figure by rendering it to PNG and setting their ``Output``'s
``outputs`` directly, so they work the same in a kernel and in a test without one
(where ``with output:`` captures nothing), and no figure is left open.
Display one as the last expression of a cell, or with ``display(browser)``.
"""

from __future__ import annotations

import base64
import html
from io import BytesIO

import ipywidgets as widgets
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import plots

TABLE_COLUMNS = ["anchor", "level", "t_score", "t_rank", "s_score", "s_rank", "t_iou", "s_iou"]


def show_figure(output: widgets.Output, fig: Figure, dpi: int = 90) -> None:
    """Replace what ``output`` shows with ``fig`` as a PNG, then release the figure."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fig.clear()  # plots.* figures are not pyplot's: dropping the last reference frees them
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": "<Figure>"},
            "metadata": {},
        },
    )


def show_message(output: widgets.Output, text: str) -> None:
    output.outputs = ({"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}},)


class _Display:
    """Display delegation: the object shows as its top-level ``widget``."""

    widget: widgets.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _underlying(dataset, index: int):
    """The base data set under any ``Subset`` chain and ``index`` mapped into it."""
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        index = dataset.indices[index]
        dataset = dataset.dataset
    return dataset, index


def candidate_table(detail, gt_index: int) -> pd.DataFrame:
    """GT ``gt_index``'s candidates, sorted by teacher rank, in :data:`TABLE_COLUMNS`."""
    cand = detail.candidates[detail.candidates["gt_index"] == gt_index]
    return cand.sort_values(["t_rank", "anchor"])[TABLE_COLUMNS].reset_index(drop=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _table_html(table: pd.DataFrame, caption: str) -> str:
    if table.empty:
        return f"<p><b>{html.escape(caption)}</b>: no candidate anchors</p>"
    fmt = {c: "{:.4f}".format for c in ("t_score", "s_score")} | {c: "{:.3f}".format for c in ("t_iou", "s_iou")}
    body = table.to_html(index=False, border=0, formatters=fmt, classes="rmkd-candidates", justify="center")
    return f"<p><b>{html.escape(caption)}</b> (sorted by teacher rank; rank 1 = top)</p>{body}"


class InstanceBrowser(_Display):
    """Browse one GT instance at a time: its candidates ranked by teacher and student.

    Args:
        teacher, student: the pair (as :func:`rmkd.analysis.collect`).
        dataset: a :class:`rmkd.data.CocoDetection` or a Subset of one; the image
            slider runs over its indices.
        adapter: how student features reach the teacher's channels for the F_dif
            maps of the computed details. ``"fit"`` fits one least-squares adapter
            on the first image computed and reuses it for every later image, so
            F_dif stays comparable across the browser's details (e.g. when passing
            ``browser.details`` to :class:`LevelSelector`). The candidates, ranks and
            scores shown here do not depend on it. ``None``, a module or a list of
            per-level modules are passed through as they are.
        details: optional ``{image_id: ImageDetail}`` already computed (e.g.
            ``Collection.details``); images found there are not recomputed.
        **collect_kwargs: more arguments for :func:`rmkd.analysis.inspect_image`
            (``score``, ``device``, ``iou_threshold``, ...).

    Each image's :class:`~rmkd.analysis.ImageDetail` is computed when first shown and
    cached (``.details``, keyed by image id). Attributes for driving it from code:
    ``.image`` (IntSlider), ``.instance`` (Dropdown of ``gt_index``), ``.table`` (HTML),
    ``.output`` (Output with the figure), ``.status`` (HTML), ``.widget`` (VBox),
    ``.renders`` (how many times the figure was drawn), ``.detail`` (the current image's).
    """

    def __init__(self, teacher, student, dataset, *, adapter="fit", details=None, **collect_kwargs):
        if len(dataset) == 0:
            raise ValueError("InstanceBrowser needs a data set with at least one image")
        self.teacher, self.student, self.dataset = teacher, student, dataset
        self.adapter = adapter
        self.collect_kwargs = collect_kwargs
        self.details: dict[int, object] = dict(details or {})
        base, _ = _underlying(dataset, 0)
        self.class_names = getattr(base, "class_names", None)
        self.renders = 0
        self._refreshing = False

        self.image = widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="image",
                                       continuous_update=False)
        self.instance = widgets.Dropdown(description="instance", layout=widgets.Layout(width="22em"))
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.table = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.image, self.instance]), self.status, self.output, self.table])
        self._show_image()  # errors in the first image surface here, not in a callback
        self.image.observe(self._on_image, names="value")
        self.instance.observe(self._on_instance, names="value")

    # ------------------------------------------------------------------ data

    def image_id(self, index: int) -> int:
        """COCO image id of data set index ``index`` (without loading the image if possible)."""
        base, i = _underlying(self.dataset, index)
        if hasattr(base, "ids"):
            return int(base.ids[i])
        return int(self.dataset[index][1]["image_id"])

    def detail_at(self, index: int):
        """The :class:`~rmkd.analysis.ImageDetail` of data set index ``index`` (cached)."""
        from .analysis import collect, inspect_image

        image_id = self.image_id(index)
        if image_id not in self.details:
            if isinstance(self.adapter, str) and self.adapter == "fit":
                # collect() on this one image: the same ImageDetail as inspect_image, plus
                # the fitted adapter, which every later image reuses.
                from torch.utils.data import DataLoader, Subset

                from .data import collate

                loader = DataLoader(Subset(self.dataset, [index]), batch_size=1, collate_fn=collate)
                kwargs = {"progress": False, **self.collect_kwargs}
                col = collect(self.teacher, self.student, loader, details=1, adapter="fit", **kwargs)
                self.adapter = col.adapter
                detail = next(iter(col.details.values()))
            else:
                detail = inspect_image(self.teacher, self.student, self.dataset, index, adapter=self.adapter,
                                       **self.collect_kwargs)
            self.details[image_id] = detail
        return self.details[image_id]

    def _category(self, row: pd.Series) -> str:
        label = int(row["label"])
        if "category" in row.index:
            name = str(row["category"])
        elif self.class_names and 0 < label <= len(self.class_names):
            name = str(self.class_names[label - 1])
        else:
            return f"label {label}"
        return f"'{name}'" if name.isdigit() else name  # '3' reads as a class, not a count

    def instance_options(self, detail) -> list[tuple[str, int]]:
        """``(label, gt_index)`` per GT, e.g. ``("#0 '3' (12 candidates)", 0)``."""
        counts = detail.candidates["gt_index"].value_counts()
        return [
            (f"#{int(row['gt_index'])} {self._category(row)} ({_plural(int(counts.get(row['gt_index'], 0)), 'candidate')})",
             int(row["gt_index"]))
            for _, row in detail.gt.iterrows()
        ]

    # ------------------------------------------------------------------ drawing

    def _show_image(self) -> None:
        index = self.image.value
        self.detail = self.detail_at(index)
        options = self.instance_options(self.detail)
        self._refreshing = True  # new options reset the value: draw once, below
        try:
            self.instance.options = options
            self.instance.value = options[0][1] if options else None
        finally:
            self._refreshing = False
        self.status.value = (f"image index {index} (id {self.detail.image_id}): {_plural(len(options), 'GT')}, "
                             f"{_plural(len(self.detail.candidates), 'candidate')}")
        self._show_instance()

    def _show_instance(self) -> None:
        detail, gt_index = self.detail, self.instance.value
        if gt_index is None:
            self.table.value = "<p>this image has no GT box</p>"
            fig = Figure(figsize=(4, 4), layout="constrained")
            ax = fig.add_subplot()
            plots._draw_image(ax, detail)
            ax.set_title(f"image {detail.image_id}: no GT")
        else:
            label = dict((v, k) for k, v in self.instance.options)[gt_index]
            self.table.value = _table_html(candidate_table(detail, gt_index), f"image {detail.image_id}, GT {label}")
            fig = plots.plot_candidates(detail, gt_index)
        show_figure(self.output, fig)
        self.renders += 1

    def _on_image(self, change) -> None:
        try:
            self.status.value = f"computing image {change['new']}…"
            self._show_image()
        except Exception as e:  # a callback's exception would vanish into the log console
            self.status.value = f"<span style='color:#b00'>{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>"
            raise

    def _on_instance(self, change) -> None:
        if not self._refreshing:
            self._show_instance()


class LevelSelector(_Display):
    """F_dif vs P_dif of one image and one FPN level at a time.

    Args:
        details: ``{image_id: ImageDetail}`` (e.g. ``Collection.details`` or
            ``InstanceBrowser.details``) or a single ``ImageDetail``.
        top_fraction: the hot-spot share for the top-locations IoU.

    The figure's colour scales are the image's maxima over all its levels
    (:func:`rmkd.plots.gap_scales`), the same whichever level is shown.
    The HTML line gives the level's Pearson r, Spearman rho and the IoU of the two
    maps' top ``top_fraction`` locations, from :func:`rmkd.analysis.gap_statistics`
    on the detail's maps (no GT mask, so no in-GT shares). Attributes: ``.image``
    (Dropdown of image ids), ``.level`` (ToggleButtons of level indices), ``.stats``
    (HTML), ``.output`` (Output), ``.widget`` (VBox), ``.renders``.
    """

    def __init__(self, details, *, top_fraction: float = 0.1):
        if hasattr(details, "maps"):
            details = {details.image_id: details}
        if not details:
            raise ValueError("LevelSelector needs at least one ImageDetail")
        self.details = dict(details)
        self.top_fraction = top_fraction
        self.renders = 0
        self._refreshing = False
        self.image = widgets.Dropdown(options=[(f"image {k}", k) for k in self.details], description="image")
        self.level = widgets.ToggleButtons(description="level", style={"button_width": "auto"})
        self.stats = widgets.HTML()
        self.output = widgets.Output()
        self.widget = widgets.VBox([self.image, self.level, self.stats, self.output])
        self._set_levels()
        self._show()
        self.image.observe(self._on_image, names="value")
        self.level.observe(self._on_level, names="value")

    @property
    def detail(self):
        return self.details[self.image.value]

    def _set_levels(self) -> None:
        maps = self.detail.maps
        options = [(plots._level_name(m["level"], m["stride"]), int(m["level"])) for m in maps]
        keep = self.level.value if self.level.value in [v for _, v in options] else options[0][1]
        self._refreshing = True
        try:
            self.level.options = options
            self.level.value = keep
        finally:
            self._refreshing = False

    def statistics(self) -> dict[str, float]:
        """The current image/level's :func:`gap_statistics` row as a dict."""
        from .analysis import gap_statistics

        m = next(m for m in self.detail.maps if int(m["level"]) == self.level.value)
        f_dif = np.asarray(m["f_dif"], dtype=np.float64)[None]  # [1, h, w]
        p_dif = np.asarray(m["p_dif"], dtype=np.float64)[None]
        return gap_statistics(f_dif, p_dif, top_fraction=self.top_fraction).iloc[0].to_dict()

    def _show(self) -> None:
        s = self.statistics()
        m = next(m for m in self.detail.maps if int(m["level"]) == self.level.value)
        h, w = np.shape(m["f_dif"])
        self.stats.value = (
            f"image {self.detail.image_id}, {plots._level_name(m['level'], m['stride'])} ({h}x{w} cells): "
            f"Pearson r = <b>{s['pearson']:.3f}</b>, Spearman ρ = <b>{s['spearman']:.3f}</b>, "
            f"top-{self.top_fraction:.0%} IoU = <b>{s['top_iou']:.3f}</b> "
            f"(mean F_dif {s['f_dif_mean']:.3g}, mean P_dif {s['p_dif_mean']:.3g})"
        )
        # one colour scale per image over all its levels: switching level keeps the scale, so a
        # coarse level's small differences look small instead of being stretched to its own max
        scales = plots.gap_scales(self.detail)
        show_figure(self.output, plots.plot_gap_panels(self.detail, levels=[self.level.value], scales=scales))
        self.renders += 1

    def _on_image(self, change) -> None:
        self._set_levels()
        self._show()

    def _on_level(self, change) -> None:
        if not self._refreshing:
            self._show()
