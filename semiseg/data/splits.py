"""Case-level splits: seeded, nested across budgets, saved as JSON and reused.

One permutation of the labelled cases (from the split seed) decides everything: the first cases are the
test set, the next the validation set, and the labelled training cases are a *prefix* of the rest, so
the labelled set of a smaller budget is contained in the one of a larger budget and the test set does
not depend on the budget. Every method of a comparison reads the same JSON, which is what makes their
numbers comparable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from semiseg.data.case import CaseRef, DatasetSpec
from semiseg.errors import DataError

SPLIT_KEYS = ("labelled", "unlabelled", "val", "test")


# split.<key>: auto → (cases on a large dataset, share of the labelled cases below that); at least 1 case.
AUTO_SIZES = {"test": (6, 0.3), "val": (2, 0.1)}


def _count(value: int | float | Literal["auto"], available: int, key: str) -> int:
    """Resolve a count, a fraction of ``available`` cases, or ``auto`` (``AUTO_SIZES``)."""
    if value == "auto" and key in AUTO_SIZES:
        cases, share = AUTO_SIZES[key]
        return min(cases, max(1, int(round(share * available))))
    if isinstance(value, bool | str):
        raise DataError(f"split.{key} must be a number of cases or a fraction, not {value!r}")
    if isinstance(value, float) and 0 < value < 1:
        return max(1, int(round(value * available)))
    if value < 0 or (isinstance(value, float) and not value.is_integer()):
        raise DataError(f"split.{key}={value!r}: give a whole number of cases or a fraction in (0, 1)")
    return int(value)


def _said(value: int | float | str, cases: int) -> str:
    """A split size as the user wrote it, with the cases it came to when that differs."""
    return f"{value}" if value == cases else f"{value} ({cases} case{'' if cases == 1 else 's'})"


def _permute(ids: list[str], seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(ids))
    ordered = sorted(ids)
    return [ordered[i] for i in order]


def _fixed(spec: DatasetSpec, seed: int) -> dict[str, list[str]]:
    """Split prescribed by the source (e.g. ACDC list files): only the labelled budget is drawn."""
    fixed = spec.fixed_split or {}
    labelled_pool = {c.case_id for c in spec.cases if c.has_label}
    train = [i for i in fixed.get("train", []) if i in labelled_pool]
    # A source may fix the order in which its training cases get labels, so every seed labels the same ones.
    order = [i for i in fixed.get("labelling_order", []) if i in labelled_pool]
    return {
        "test": sorted(set(fixed.get("test", [])) | {c.case_id for c in spec.test_cases if c.has_label}),
        "val": list(fixed.get("val", [])),
        "pool": order or _permute(train, seed),
    }


def _drawn(spec: DatasetSpec, val: int | float | Literal["auto"], test: int | float | Literal["auto"],
           seed: int) -> dict[str, list[str]]:
    labelled = _permute([c.case_id for c in spec.cases if c.has_label], seed)
    explicit_test = [c.case_id for c in spec.test_cases if c.has_label]
    n_test = 0 if explicit_test else _count(test, len(labelled), "test")
    n_val = _count(val, len(labelled), "val")
    if not labelled:
        where = f" ({spec.root})" if spec.root else ""
        raise DataError(
            f"dataset {spec.name!r}{where} has no labelled training case: {len(spec.cases)} image(s) were found "
            "but none has a label file; add the labels (run 'semiseg data check' to see how the files were read)"
        )
    if n_test + n_val >= len(labelled):
        raise DataError(
            f"the dataset has {len(labelled)} labelled cases, too few for split.test={_said(test, n_test)} and "
            f"split.val={_said(val, n_val)} plus at least one labelled training case; lower split.test or split.val"
        )
    return {
        "test": explicit_test or labelled[:n_test],
        "val": labelled[n_test : n_test + n_val],
        "pool": labelled[n_test + n_val :],
    }


def make_split(
    spec: DatasetSpec,
    *,
    labelled: int | float | Literal["all"],
    val: int | float | Literal["auto"],
    test: int | float | Literal["auto"],
    seed: int,
    unlabelled: int | float | Literal["rest"] = "rest",
) -> dict[str, Any]:
    """Return ``{"labelled", "unlabelled", "val", "test": [case ids], "seed", "dataset"}``.

    Counts are numbers of cases, floats in (0, 1) fractions (the ``split.*`` settings), ``auto`` sizes follow
    ``AUTO_SIZES``; ``val`` and ``test`` are ignored where the source prescribes its own split.
    """
    parts = _fixed(spec, seed) if spec.fixed_split else _drawn(spec, val, test, seed)
    pool = parts["pool"]
    n_lab = len(pool) if labelled == "all" else _count(labelled, len(pool), "labelled")
    if n_lab > len(pool):
        raise DataError(
            f"split.labelled={labelled} but only {len(pool)} labelled cases remain for training after "
            f"taking {len(parts['test'])} test and {len(parts['val'])} validation cases; lower split.labelled "
            "or use 'all'"
        )
    if n_lab == 0:
        raise DataError("split.labelled is 0: a split needs at least one labelled training case")
    if not parts["test"]:
        raise DataError("the split has no test cases: set split.test to at least 1 (or give the source a test set)")
    hidden = pool[n_lab:]  # labelled cases whose labels are withheld (the usual SSL protocol)
    unlabelled_ids = hidden + sorted(c.case_id for c in spec.cases if not c.has_label)
    if unlabelled != "rest":
        unlabelled_ids = unlabelled_ids[: _count(unlabelled, len(unlabelled_ids), "unlabelled")]
    return {
        "dataset": spec.name,
        "seed": seed,
        "labelled": pool[:n_lab],
        "unlabelled": unlabelled_ids,
        "val": parts["val"],
        "test": parts["test"],
    }


def save_split(split: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(split, indent=2))


def load_split(path: str | Path, spec: DatasetSpec) -> dict[str, Any]:
    """Read a saved split and check that every id exists in the dataset."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"split file {str(file)!r} does not exist; set split.file to a split.json of an earlier run")
    try:
        split = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {str(file)!r} is not valid JSON: {exc}") from None
    missing_keys = [k for k in SPLIT_KEYS if k not in split]
    if missing_keys:
        raise DataError(f"split file {str(file)!r} lacks the keys {missing_keys}")
    known = {c.case_id for c in spec.all_refs()}
    unknown = sorted({i for k in SPLIT_KEYS for i in split[k]} - known)
    if unknown:
        raise DataError(
            f"split file {str(file)!r} names cases the dataset does not have: {unknown[:5]}"
            + (" ..." if len(unknown) > 5 else "")
        )
    return split


def refs_by_id(spec: DatasetSpec) -> dict[str, CaseRef]:
    return {c.case_id: c for c in spec.all_refs()}
