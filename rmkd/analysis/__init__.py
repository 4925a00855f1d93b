"""The paper's two observations as data: rank agreement and the F_dif vs P_dif gap.

- :func:`rank_agreement`: per-instance Kendall tau-b / Spearman / top-1 agreement.
- :func:`rank_kl`: per-instance RM divergence (what RM trains) and score mean / spread.
- :func:`gap_statistics`: per-image correlation and hot-spot overlap of F_dif and P_dif.
- :func:`collect`: both, over a data set, for a teacher/student pair, in one pass.
- :func:`kept_detections`: NMS survivors with the anchor each came from.
- :class:`AnalysisHook`: the same statistics every N training steps.
"""

from .cache import cached_collect
from .collect import Collection, ImageDetail, collect, inspect_image, size_class, summarize
from .gap import fit_adapter, gap_maps, gap_statistics
from .kept import kept_detections
from .rank import rank_agreement
from .rank_kl import rank_kl
from .regions import gap_means, level_gap_table, level_shares, pfi_verdicts, region_masks, region_shares

__all__ = [
    "Collection",
    "ImageDetail",
    "cached_collect",
    "collect",
    "fit_adapter",
    "gap_means",
    "gap_maps",
    "gap_statistics",
    "inspect_image",
    "kept_detections",
    "level_gap_table",
    "level_shares",
    "pfi_verdicts",
    "rank_agreement",
    "rank_kl",
    "region_masks",
    "region_shares",
    "size_class",
    "summarize",
]
