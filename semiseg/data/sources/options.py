"""The ``data.options`` each source accepts, as pydantic models: one place that checks them (an error names
``data.options.<key>``) and that ``python -m semiseg.docs`` reads to document them.

Each model mirrors the keyword arguments of its source's open function (a test holds the two together); the
function keeps the checks that need the data (e.g. a size at least 8 per axis for the phantom's dimension).
This module imports nothing heavy, so checking options never pays for a source's own dependencies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from semiseg.errors import ConfigError

LabelModeOption = Literal["multiclass", "multilabel"] | None


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NnunetOptions(SourceOptions):
    unlabelled_dirs: list[str] = Field(["imagesUnlabelled"],
        description="folders (under the dataset folder) of images without labels, used as unlabelled data")
    label_mode: LabelModeOption = Field(None, description="None: multilabel when dataset.json's labels declare "
                                        "regions (lists of values), else multiclass; multilabel on plain labels "
                                        "gives one channel per non-background class")


class DecathlonOptions(NnunetOptions):
    pass


class Folder2dOptions(SourceOptions):
    images: str = Field("images", description="sub-folder of the training images")
    masks: str = Field("masks", description="sub-folder of the masks, named like their images")
    unlabelled: str = Field("unlabelled", description="sub-folder of images without masks (optional)")
    class_names: list[str] | None = Field(None, description="class names, background first (None: from "
                                          "dataset.json when present, else inferred from the mask values)")


class AcdcOptions(SourceOptions):
    spacing: tuple[float, float, float] | None = Field(None, description="voxel size in mm, in array axis order "
                                                       "(H, W, D); the h5 files do not store it (None: distances "
                                                       "in voxels)")


class LaOptions(SourceOptions):
    spacing: tuple[float, float, float] | None = Field((0.625, 0.625, 0.625),
        description="voxel size in mm (the 2018 LA challenge grid); None: unknown, distances in voxels")


class PhantomOptions(SourceOptions):
    n_cases: int = Field(8, ge=0, description="labelled phantoms")
    dim: Literal[2, 3] = Field(2, description="2: images; 3: volumes")
    size: int | list[int] | None = Field(None, description="side (or one number per axis), at least 8; None: 64 "
                                         "in 2D, 32 in 3D")
    label_mode: Literal["multiclass", "multilabel"] = Field("multiclass", description="multiclass: classes "
                                                           "painted over each other; multilabel: nested, "
                                                           "overlapping channels like BraTS regions")
    num_classes: int = Field(3, ge=1, description="classes counting background (multiclass), or label channels "
                             "(multilabel)")
    channels: int = Field(1, ge=1, description="image channels")
    n_unlabelled: int = Field(0, ge=0, description="further phantoms without labels")
    seed: int = Field(0, ge=0, description="generator seed of the dataset (not the run seed)")


class DemoBrainOptions(SourceOptions):
    n_subjects: int = Field(20, ge=1, description="virtual brains built (every one labelled)")
    spacing_mm: float = Field(2.0, ge=1.0, le=8.0, description="isotropic voxel size in mm")
    seed: int = Field(0, ge=0, description="seed of the subjects' anatomy and site effects (not the run seed)")
    cache_dir: str | None = Field(None, description="folder of the generated brains (None: "
                                  "~/.cache/semiseg/demo_brain, or $SEMISEG_CACHE/demo_brain; data.path if set)")
    difficulty: dict[str, Any] | None = Field(None, description="generator knobs (rotation_deg, warp_mm, "
                                              "max_bias, n_sites, ...; see semiseg/data/sources/demo_brain)")
    progress: bool = Field(True, description="print progress while the brains are generated")


class HeartSitesOptions(SourceOptions):
    n_subjects: int = Field(24, ge=1, description="simulated subjects, subject i scanned at site i mod n_sites")
    n_sites: int = Field(4, ge=1, description="scanner sites (contrast, gamma, resolution, bias field, noise)")
    labelled_site: int = Field(0, ge=0, description="the site whose training subjects are labelled first")
    test_per_site: int = Field(2, ge=0, description="test subjects of each site")
    val_per_site: int = Field(1, ge=0, description="validation subjects of each site")
    shift: float = Field(1.0, ge=0, description="how far the sites differ (below 1: closer than the default)")
    seed: int = Field(0, ge=0, description="seed of the anatomy and the sites (not the run seed)")
    cache_dir: str | None = Field(None, description="folder of the generated cases (data.path if set)")


class LiverLesionsOptions(SourceOptions):
    n_cases: int = Field(24, ge=1, description="simulated CT-like liver crops")
    n_test: int = Field(8, ge=0, description="test cases of the fixed split")
    n_val: int = Field(4, ge=0, description="validation cases of the fixed split")
    size: int = Field(48, ge=8, description="voxels per axis of each cubic crop")
    seed: int = Field(0, ge=0, description="seed of the livers, lesions and contrast phases (not the run seed)")
    cache_dir: str | None = Field(None, description="folder of the generated cases (data.path if set)")


OPTIONS: dict[str, type[SourceOptions]] = {
    "nnunet": NnunetOptions, "decathlon": DecathlonOptions, "folder2d": Folder2dOptions, "acdc": AcdcOptions,
    "la": LaOptions, "phantom": PhantomOptions, "demo_brain": DemoBrainOptions,
    "heart_sites": HeartSitesOptions, "liver_lesions": LiverLesionsOptions,
}


def check_options(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` for ``source``; return only the keys given, with their validated values (the open
    function's own defaults hold for the rest)."""
    model = OPTIONS.get(source)
    if model is None:
        return options
    try:
        checked = model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"source '{source}' has no option data.options.{key}; it accepts: "
                                f"{', '.join(model.model_fields)}")
            else:
                problems.append(f"data.options.{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("; ".join(problems)) from None
    return {key: value for key, value in checked.model_dump().items() if key in checked.model_fields_set}
