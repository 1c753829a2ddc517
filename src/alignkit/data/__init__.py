"""Feedback data: records, readers/writers for every format, and trainer helpers.

``import alignkit.data`` needs only the standard library; pyarrow and ``datasets`` are
imported when a Parquet file or a dataset directory is read or written.

>>> from alignkit.data import load_records, to_comparisons
>>> result = load_records("hh.jsonl.gz")          # doctest: +SKIP
>>> result.format, len(result.records)            # doctest: +SKIP
('hh', 1800)
"""

from alignkit.data.formats import FORMATS, detect_row_format, render_messages, split_hh
from alignkit.data.io import (
    CONTAINERS,
    LoadResult,
    detect_container,
    detect_format,
    load_prompts,
    load_records,
    read_rows,
    save_records,
)
from alignkit.data.records import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    Record,
    TrajectoryPair,
    record_from_dict,
    record_to_dict,
)
from alignkit.data.transforms import (
    correction_comparison,
    correction_sft_examples,
    ranking_orders,
    ranking_pairs,
    rating_pairs,
    to_comparisons,
    train_eval_split,
)

__all__ = [
    "CONTAINERS",
    "FORMATS",
    "Comparison",
    "Correction",
    "LoadResult",
    "Ranking",
    "Rating",
    "Record",
    "TrajectoryPair",
    "correction_comparison",
    "correction_sft_examples",
    "detect_container",
    "detect_format",
    "detect_row_format",
    "load_prompts",
    "load_records",
    "ranking_orders",
    "ranking_pairs",
    "rating_pairs",
    "read_rows",
    "record_from_dict",
    "record_to_dict",
    "render_messages",
    "save_records",
    "split_hh",
    "to_comparisons",
    "train_eval_split",
]
