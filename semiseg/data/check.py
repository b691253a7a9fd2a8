"""Validation of loaded cases and whole datasets.

``validate_case`` is called by every source inside ``CaseRef.load`` so that any consumer (training,
prediction, ``semiseg check``) gets one clear ``DataError`` naming the file instead of a shape error deep
inside a network. ``check_dataset`` loads everything once and *collects* the problems, because a user
fixing a dataset wants the full list, not one error per run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from semiseg.data.case import Case, CaseRef, DatasetSpec, LabelMode
from semiseg.errors import DataError, SemisegError

GEOMETRY_RTOL = 1e-3
_MAX_LISTED = 10


# --------------------------------------------------------------------------------------------------
# helpers shared by the sources


def list_values(values: Iterable, limit: int = _MAX_LISTED) -> str:
    """Render offending values compactly, so a label full of junk does not flood the message."""
    vals = [v.item() if isinstance(v, np.generic) else v for v in values]
    text = ", ".join(str(v) for v in vals[:limit])
    return f"[{text}, ... ({len(vals)} in all)]" if len(vals) > limit else f"[{text}]"


def integer_label(raw: np.ndarray, where: str) -> np.ndarray:
    """Return ``raw`` as an integer array; float files are accepted when every value is integral.

    Many NIfTI/h5 labels are stored as float, which is harmless as long as no interpolation has smeared
    them; smeared labels are a real error that would silently create bogus classes.
    """
    raw = np.asarray(raw)
    if raw.dtype == bool:
        return raw.astype(np.uint8)
    if raw.dtype.kind in "iu":
        return raw
    if raw.dtype.kind != "f":
        raise DataError(f"{where}: label has dtype {raw.dtype}; save it as an integer image of class indices")
    finite = np.isfinite(raw)
    if not finite.all():
        raise DataError(f"{where}: label contains {int((~finite).sum())} NaN/Inf values; re-export the label")
    rounded = np.rint(raw)
    off = raw != rounded
    if off.any():
        raise DataError(
            f"{where}: label has non-integer values such as {list_values(np.unique(raw[off]), 5)}; it was "
            "probably resampled with linear interpolation — resample labels with nearest-neighbour"
        )
    return rounded.astype(np.int64)


def present_values(label: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer label; bincount is far faster than np.unique on big volumes."""
    if label.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi < 1 << 16:
        return np.flatnonzero(np.bincount(label.ravel().astype(np.intp, copy=False), minlength=hi + 1))
    return np.unique(label)


def compact_int_label(label: np.ndarray) -> np.ndarray:
    """Cast a multiclass label to int16 when it fits; wider values are kept so range checks still see them."""
    if label.size == 0 or (label.min() >= np.iinfo(np.int16).min and label.max() <= np.iinfo(np.int16).max):
        return label.astype(np.int16, copy=False)
    return label.astype(np.int64, copy=False)


def geometry_mismatch(
    spacing_a: tuple[float, ...],
    affine_a: np.ndarray | None,
    spacing_b: tuple[float, ...],
    affine_b: np.ndarray | None,
) -> str | None:
    """Describe how two grids differ beyond ``GEOMETRY_RTOL`` (relative), or return None when they agree.

    Image and label must share voxel geometry: a label on a different grid would silently train the
    network on misaligned targets.
    """
    sa, sb = np.asarray(spacing_a, float), np.asarray(spacing_b, float)
    if sa.shape != sb.shape or np.any(np.abs(sa - sb) > GEOMETRY_RTOL * np.maximum(np.abs(sa), np.abs(sb))):
        return f"spacing {_fmt_tuple(spacing_a)} vs {_fmt_tuple(spacing_b)}"
    if affine_a is None or affine_b is None:
        return None
    aa, ab = np.asarray(affine_a, float), np.asarray(affine_b, float)
    scale = max(1.0, float(np.abs(aa).max()), float(np.abs(ab).max()))
    if np.any(np.abs(aa - ab) > GEOMETRY_RTOL * scale):
        if np.allclose(aa[:3, :3], ab[:3, :3], rtol=0, atol=GEOMETRY_RTOL * scale):
            return f"origin {_fmt_tuple(aa[:3, 3])} vs {_fmt_tuple(ab[:3, 3])}"
        return f"axes (affine rows) {_fmt_rows(aa)} vs {_fmt_rows(ab)}"
    return None


def _fmt_rows(affine: np.ndarray) -> str:
    """A 4x4 affine's first three rows on one line, so the message stays one line."""
    return "[" + "; ".join(" ".join(f"{float(v):.4g}" for v in row) for row in affine[:3]) + "]"


def _fmt_tuple(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


# --------------------------------------------------------------------------------------------------
# one case


def validate_case(case: Case, *, label_mode: LabelMode, num_classes: int, origin: str) -> None:
    """Raise ``DataError`` for the first problem that would break training on this case."""
    _check_image(case, origin)
    _check_spacing(case, origin)
    if case.label is not None:
        if label_mode == "multilabel":
            _check_multilabel(case, num_classes, origin)
        else:
            _check_multiclass(case, num_classes, origin)


def _check_image(case: Case, origin: str) -> None:
    image = case.image
    if not isinstance(image, np.ndarray) or image.ndim not in (3, 4):
        shape = getattr(image, "shape", None)
        raise DataError(
            f"{origin}: image has shape {shape}; expected (channels, *spatial) with 2 or 3 spatial axes"
        )
    if image.dtype.kind != "f":
        raise DataError(f"{origin}: image has dtype {image.dtype}; sources must deliver float arrays")
    if 0 in image.shape:
        raise DataError(f"{origin}: image has an empty axis (shape {image.shape})")
    check_finite(image, origin)


def check_finite(image: np.ndarray, where: str) -> None:
    """NaN/Inf voxels poison every loss and normalisation, so they are rejected with a count."""
    finite = np.isfinite(image)
    if not finite.all():
        n_nan = int(np.isnan(image).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise DataError(
            f"{where}: image contains {n_nan} NaN and {n_inf} Inf values; replace them (e.g. with 0) "
            "or re-export the image"
        )


def _check_spacing(case: Case, origin: str) -> None:
    spacing = tuple(case.spacing)
    if len(spacing) != case.ndim:
        raise DataError(
            f"{origin}: spacing {spacing} has {len(spacing)} entries for {case.ndim} spatial axes"
        )
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise DataError(
            f"{origin}: spacing {spacing} is not positive; fix the voxel size in the file header "
            "(NIfTI pixdim) or pass the spacing explicitly"
        )
    if case.affine is not None and np.shape(case.affine) != (4, 4):
        raise DataError(f"{origin}: affine has shape {np.shape(case.affine)}, expected (4, 4)")


def _check_multiclass(case: Case, num_classes: int, origin: str) -> None:
    label = case.label
    if label.shape != case.spatial_shape:
        raise DataError(
            f"{origin}: label shape {label.shape} differs from image shape {case.spatial_shape}; "
            "image and label must be on the same voxel grid"
        )
    if label.dtype.kind not in "iu":
        raise DataError(f"{origin}: label has dtype {label.dtype}; expected integer class indices")
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        values = present_values(label)
        bad = values[(values < 0) | (values >= num_classes)]
        raise DataError(
            f"{origin}: label values {list_values(bad)} are outside the declared classes "
            f"0..{num_classes - 1} ({num_classes} classes); fix the label file or declare more classes"
        )


def _check_multilabel(case: Case, num_classes: int, origin: str) -> None:
    label = case.label
    expected = (num_classes, *case.spatial_shape)
    if label.shape != expected:
        raise DataError(
            f"{origin}: multilabel label has shape {label.shape}, expected {expected} "
            "(one 0/1 channel per class, on the image grid)"
        )
    if label.size and (label.max() > 1 or label.min() < 0):
        bad = [v for v in np.unique(label) if v not in (0, 1)]
        raise DataError(f"{origin}: multilabel label has values {list_values(bad)}; channels must be 0/1")


@dataclass(frozen=True)
class CheckedLoader:
    """``CaseRef.load`` wrapper that validates what it read (a class, not a closure, so it pickles)."""

    read: Callable[[], Case]
    label_mode: LabelMode
    num_classes: int
    origin: str

    def __call__(self) -> Case:
        try:
            case = self.read()
        except OSError as exc:  # permission denied, disk errors: still the user's file to fix
            raise DataError(f"{self.origin}: cannot be read ({exc})") from exc
        validate_case(case, label_mode=self.label_mode, num_classes=self.num_classes, origin=self.origin)
        return case


# --------------------------------------------------------------------------------------------------
# whole dataset


@dataclass
class Problem:
    """One thing wrong with the dataset, tied to the file(s) it came from."""

    origin: str
    message: str


@dataclass
class DatasetReport:
    """Summary statistics and the collected problems of one dataset."""

    name: str
    root: str
    label_mode: LabelMode
    class_names: list[str]
    declared_channels: int
    declared_dim: int
    n_labelled: int = 0
    n_unlabelled: int = 0
    n_test: int = 0
    n_test_labelled: int = 0
    channels: dict[int, int] = field(default_factory=dict)  # channel count -> number of cases
    dims: dict[int, int] = field(default_factory=dict)  # spatial dims -> number of cases
    spacing_min: tuple[float, ...] | None = None
    spacing_median: tuple[float, ...] | None = None
    spacing_max: tuple[float, ...] | None = None
    size_min: tuple[int, ...] | None = None
    size_max: tuple[int, ...] | None = None
    intensity_min: float | None = None
    intensity_max: float | None = None
    class_fraction: dict[str, float] = field(default_factory=dict)  # over labelled training cases
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the source's notes: legal, but probably unintended

    @property
    def ok(self) -> bool:
        return not self.problems


class _Stats:
    """Running accumulators, so checking never holds more than one case in memory."""

    def __init__(self, num_classes: int) -> None:
        self.spacings: dict[int, list[tuple[float, ...]]] = {}
        self.sizes: dict[int, list[tuple[int, ...]]] = {}
        self.lo = np.inf
        self.hi = -np.inf
        self.class_voxels = np.zeros(num_classes, dtype=np.float64)
        self.voxels = 0.0

    def add(self, case: Case, label_mode: LabelMode, num_classes: int, count_classes: bool) -> None:
        self.spacings.setdefault(case.ndim, []).append(tuple(float(s) for s in case.spacing))
        self.sizes.setdefault(case.ndim, []).append(case.spatial_shape)
        self.lo = min(self.lo, float(case.image.min()))
        self.hi = max(self.hi, float(case.image.max()))
        if count_classes and case.label is not None:
            self.class_voxels += _class_voxels(case.label, label_mode, num_classes)
            self.voxels += float(np.prod(case.spatial_shape))


def _class_voxels(label: np.ndarray, label_mode: LabelMode, num_classes: int) -> np.ndarray:
    if label_mode == "multilabel":
        return label.reshape(num_classes, -1).sum(axis=1, dtype=np.float64)
    return np.bincount(label.ravel().astype(np.int64), minlength=num_classes)[:num_classes].astype(float)


def check_dataset(spec: DatasetSpec, *, progress: Callable[[str], None] | None = None) -> DatasetReport:
    """Load every case of ``spec`` (pool and test) and collect all problems plus summary statistics."""
    report = DatasetReport(
        name=spec.name,
        root=spec.root,
        label_mode=spec.label_mode,
        class_names=list(spec.class_names),
        declared_channels=spec.channels,
        declared_dim=spec.dim,
        warnings=list(spec.warnings),
    )
    report.problems.extend(_structure_problems(spec))
    stats = _Stats(spec.num_classes)
    for is_test, refs in ((False, spec.cases), (True, spec.test_cases)):
        for ref in refs:
            if progress is not None:
                progress(ref.case_id)
            case = _load_collecting(ref, report.problems)
            if case is None:
                continue
            _count(report, ref, case, is_test)
            report.problems.extend(_case_consistency(spec, ref, case))
            stats.add(case, spec.label_mode, spec.num_classes, count_classes=not is_test)
    _summarise(report, stats, spec)
    return report


def _structure_problems(spec: DatasetSpec) -> list[Problem]:
    where = spec.root or spec.name
    problems = []
    if not spec.cases:
        problems.append(Problem(where, "the training pool is empty: no cases were found"))
    elif not spec.labelled:
        problems.append(Problem(where, "no training case has a label; at least one labelled case is needed"))
    ids = Counter(ref.case_id for ref in spec.all_refs())
    dupes = sorted(cid for cid, n in ids.items() if n > 1)
    if dupes:
        message = f"case ids occur more than once: {list_values(dupes)}; rename the files"
        problems.append(Problem(where, message))
    return problems


def _load_collecting(ref: CaseRef, problems: list[Problem]) -> Case | None:
    try:
        return ref.load()
    except SemisegError as exc:
        problems.append(Problem(ref.origin, str(exc)))
    except Exception as exc:  # noqa: BLE001 - the point of checking is to report everything
        problems.append(Problem(ref.origin, f"unexpected {type(exc).__name__} while loading: {exc}"))
    return None


def _count(report: DatasetReport, ref: CaseRef, case: Case, is_test: bool) -> None:
    if is_test:
        report.n_test += 1
        report.n_test_labelled += int(case.has_label)
    elif case.has_label:
        report.n_labelled += 1
    else:
        report.n_unlabelled += 1
    n_channels = int(case.image.shape[0])
    report.channels[n_channels] = report.channels.get(n_channels, 0) + 1
    report.dims[case.ndim] = report.dims.get(case.ndim, 0) + 1


def _case_consistency(spec: DatasetSpec, ref: CaseRef, case: Case) -> list[Problem]:
    problems = []
    if case.image.shape[0] != spec.channels:
        message = f"has {case.image.shape[0]} channels but the dataset declares {spec.channels}"
        problems.append(Problem(ref.origin, message))
    if case.ndim != spec.dim:
        problems.append(Problem(ref.origin, f"is {case.ndim}D but the dataset is {spec.dim}D"))
    if ref.has_label != case.has_label:
        state = "listed as labelled but loaded without a label" if ref.has_label else "has an unlisted label"
        problems.append(Problem(ref.origin, state))
    return problems


def _summarise(report: DatasetReport, stats: _Stats, spec: DatasetSpec) -> None:
    dim = spec.dim if spec.dim in stats.sizes else next(iter(stats.sizes), None)
    if dim is not None:
        spacing = np.asarray(stats.spacings[dim], dtype=float)
        sizes = np.asarray(stats.sizes[dim], dtype=int)
        report.spacing_min = tuple(spacing.min(axis=0).tolist())
        report.spacing_median = tuple(np.median(spacing, axis=0).tolist())
        report.spacing_max = tuple(spacing.max(axis=0).tolist())
        report.size_min = tuple(sizes.min(axis=0).tolist())
        report.size_max = tuple(sizes.max(axis=0).tolist())
    if np.isfinite(stats.lo):
        report.intensity_min, report.intensity_max = stats.lo, stats.hi
    if stats.voxels > 0:
        fractions = stats.class_voxels / stats.voxels
        report.class_fraction = {n: float(f) for n, f in zip(spec.class_names, fractions, strict=True)}


def format_report(report: DatasetReport) -> str:
    """Human-readable multi-line summary; problems are listed last so they are what the user sees."""
    lines = [
        f"Dataset {report.name}" + (f"  ({report.root})" if report.root else ""),
        f"  cases       : {report.n_labelled} labelled, {report.n_unlabelled} unlabelled, "
        f"{report.n_test} test ({report.n_test_labelled} with labels)",
        f"  labels      : {report.label_mode}, {len(report.class_names)} classes: "
        + ", ".join(f"{i}={n}" for i, n in enumerate(report.class_names)),
        f"  channels    : {report.declared_channels}" + _seen(report.channels),
        f"  dimensions  : {report.declared_dim}D" + _seen(report.dims),
    ]
    if report.spacing_min is not None:
        lines.append(
            f"  spacing     : min {_fmt_tuple(report.spacing_min)}"
            f"  median {_fmt_tuple(report.spacing_median)}  max {_fmt_tuple(report.spacing_max)}"
        )
        lines.append(f"  size        : min {report.size_min}  max {report.size_max}")
    if report.intensity_min is not None:
        lines.append(f"  intensity   : {report.intensity_min:.4g} .. {report.intensity_max:.4g}")
    if report.class_fraction:
        lines.append("  class voxels: " + ", ".join(f"{n} {f:.2%}" for n, f in report.class_fraction.items()))
    lines.extend(f"warning: {text}" for text in report.warnings)
    if report.ok:
        lines.append("No problems found.")
    else:
        lines.append(f"{len(report.problems)} problem(s):")
        lines.extend(f"  - {_problem_line(p)}" for p in report.problems)
    return "\n".join(lines)


def _seen(counts: dict[int, int]) -> str:
    if len(counts) <= 1:
        return ""
    return "  (found " + ", ".join(f"{k}: {n} cases" for k, n in sorted(counts.items())) + ")"


def _problem_line(problem: Problem) -> str:
    """Prefix the origin only when the message does not already name one of its files."""
    parts = [part.strip() for part in problem.origin.split(",") if part.strip()]
    if any(part in problem.message for part in parts):
        return problem.message
    return f"{problem.origin}: {problem.message}"
