"""Export a run's predicting network as a plain module with a sidecar, and predict from such an export.

An export folder holds ``model.pt`` (TorchScript) or ``model.onnx`` and ``export.json``: everything needed to
use the network correctly without semiseg's training code — input channels, intensity normalisation, the
spacing it was trained at, 2D slice or 3D patch mode, the sliding-window settings, the divisor every spatial
size must be a multiple of, the classes and label mode, and the semiseg version. The module maps a
``(B, C, *spatial)`` normalised batch to logits; it is ``method.predict(nets, x)`` traced, so a teacher
wrapper or an ensemble mean is part of it and the method's code is not. ``ExportedModel`` predicts whole
cases from an export with the same ``Inferer`` geometry as the run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator
from torch import Tensor, nn

from semiseg import __version__
from semiseg.data.case import Case
from semiseg.data.loaders import normalize_image
from semiseg.engine.device import resolve_device
from semiseg.engine.inferer import Inferer
from semiseg.engine.model import load_model
from semiseg.engine.run import Run
from semiseg.engine.run_folder import checkpoint_to_use
from semiseg.errors import SemisegError

SIDECAR = "export.json"
FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
EXPORT_EXTRA = 'pip install "semiseg[export]"'


class PredictingNetwork(nn.Module):
    """``method.predict(nets, x)`` as one module: what an export traces (no method, no training wrapper)."""

    def __init__(self, predict: Callable[[dict[str, nn.Module], Tensor], Tensor], nets: dict[str, nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self._predict = predict

    def forward(self, x: Tensor) -> Tensor:
        return self._predict(dict(self.nets.items()), x)


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise SemisegError(f"ONNX export and prediction need the {module!r} package: {EXPORT_EXTRA}") from None


def example_input(sidecar: dict[str, Any]) -> Tensor:
    """A batch of one with the export's geometry: a 3D window, or a 2D slice of a few divisors."""
    shape = sidecar["roi_size"] if sidecar["dim"] == 3 else [max(sidecar["divisor"], 16) * 2] * 2
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, sidecar["channels"], *shape, generator=generator)


def describe_export(model: Any, fmt: str, checkpoint: str, run_dir: Path,
                    spacing: list[float] | None) -> dict[str, Any]:
    """The sidecar of a ``LoadedModel``: everything a user of the plain module must reproduce."""
    cfg, inferer = model.cfg, model.inferer
    return {
        "semiseg_version": __version__, "format": fmt, "file": FORMATS[fmt], "run": str(run_dir),
        "checkpoint": checkpoint, "method": model.method.name, "output": "logits",
        "channels": model.info["channels"], "class_names": list(model.info["class_names"]),
        "label_mode": model.info["label_mode"], "normalize": cfg.data.normalize, "spacing": spacing,
        "dim": inferer.dim, "mode": "2D slices along the last axis" if inferer.dim == 2 else "3D sliding window",
        "divisor": inferer.divisor, "roi_size": list(inferer.roi_size), "sw_batch_size": inferer.batch_size,
        "overlap": inferer.overlap, "window_weights": "gaussian",
    }


def export_model(model: Any, sidecar: dict[str, Any], out_dir: Path) -> Path:
    """Write the traced predicting network and ``export.json`` into ``out_dir``; returns the model file."""
    module = PredictingNetwork(model.method.predict, model.nets).eval().cpu()
    example = example_input(sidecar)
    path = out_dir / sidecar["file"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if sidecar["format"] == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
    else:
        _export_onnx(module, example, path)
    (out_dir / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    return path


def _export_onnx(module: nn.Module, example: Tensor, path: Path) -> None:
    _require("onnx")
    axes = {0: "batch", **{i: f"axis{i - 2}" for i in range(2, example.ndim)}}
    # The TorchScript-based exporter: it keeps every spatial axis dynamic without onnxscript (the dynamo
    # exporter would need it and explicit shape constraints); torch marks it deprecated, it still works.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, dynamo=False)


class Sidecar(BaseModel):
    """What ``export.json`` must hold for prediction to reproduce the run (later versions may add keys)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["torchscript", "onnx"]
    file: str = Field(min_length=1)
    checkpoint: str
    channels: PositiveInt
    class_names: list[str] = Field(min_length=1)
    label_mode: Literal["multiclass", "multilabel"]
    normalize: Literal["zscore", "minmax", "none"]
    spacing: list[float] | None = None
    dim: Literal[2, 3]
    divisor: PositiveInt
    roi_size: list[PositiveInt]
    sw_batch_size: PositiveInt
    overlap: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _roi_fits_dim(self) -> Sidecar:
        if len(self.roi_size) != self.dim:
            raise ValueError(f"roi_size {self.roi_size} has {len(self.roi_size)} entries but dim is {self.dim}")
        return self


def _sidecar_problem(exc: ValidationError) -> str:
    """The first schema error as ``key: message (got value)``."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across keys: its message names them
        return message
    return f"{'.'.join(str(part) for part in error['loc'])}: {message} (got {error['input']!r})"


def read_sidecar(export_dir: Path) -> dict[str, Any]:
    """The export's ``export.json``, checked against ``Sidecar``: a damaged one is an error naming the file."""
    file = export_dir / SIDECAR
    if not file.is_file():
        raise SemisegError(f"{export_dir} is not a semiseg export (no {SIDECAR}); make one with 'semiseg export'")
    again = "export the run again with 'semiseg export'"
    try:
        raw = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SemisegError(f"{file} is not valid JSON ({exc}); {again}") from None
    if not isinstance(raw, dict):
        raise SemisegError(f"{file} holds a {type(raw).__name__}, not the export's description (an object); {again}")
    try:
        Sidecar.model_validate(raw)
    except ValidationError as exc:
        raise SemisegError(f"{file}: {_sidecar_problem(exc)}; {again}") from None
    if not (export_dir / raw["file"]).is_file():
        raise SemisegError(f"{file}: model file {raw['file']!r} is missing from {export_dir}; {again}")
    return raw


def _torchscript_predictor(path: Path, device: torch.device) -> Callable[[Tensor], Tensor]:
    return torch.jit.load(str(path), map_location=device).eval()


def _onnx_predictor(path: Path) -> Callable[[Tensor], Tensor]:
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        (logits,) = session.run(["logits"], {"image": x.detach().cpu().float().numpy()})
        return torch.from_numpy(logits).to(x.device)

    return run


@dataclass
class ExportedModel:
    """An export ready to predict whole cases: its module, its sidecar and the run's Inferer geometry."""

    info: dict[str, Any]
    predictor: Callable[[Tensor], Tensor]
    inferer: Inferer

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "auto", tta: bool = False) -> ExportedModel:
        export_dir = Path(export_dir)
        info = read_sidecar(export_dir)
        dev = resolve_device(device) if info["format"] == "torchscript" else torch.device("cpu")
        path = export_dir / info["file"]
        try:
            predictor = _torchscript_predictor(path, dev) if info["format"] == "torchscript" else _onnx_predictor(path)
        except SemisegError:
            raise
        except Exception as exc:  # torch and onnxruntime raise their own types for a damaged file
            reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SemisegError(f"{path} cannot be loaded as {info['format']} ({reason}); the file is damaged or "
                               "truncated: export the run again with 'semiseg export'") from None
        inferer = Inferer(dim=info["dim"], label_mode=info["label_mode"], device=dev, divisor=info["divisor"],
                          roi_size=tuple(info["roi_size"]), batch_size=info["sw_batch_size"],
                          overlap=info["overlap"], tta=tta)
        return cls(info, predictor, inferer)

    def probabilities(self, case: Case) -> np.ndarray:
        """``(K, *spatial)`` probabilities of a raw case, normalised as the run normalised its inputs."""
        return self.inferer.probabilities(self.predictor, normalize_image(case.image, self.info["normalize"]))


def training_spacing(run_dir: Path, data: str | Path | None = None) -> list[float] | None:
    """Median spacing (mm, array axis order) of the run's labelled cases; None when its data is not here
    (moved, deleted, another machine): the export needs only the weights and the recorded preprocessing."""
    try:
        run = Run.open(run_dir, progress=False, data=data)
        refs = {ref.case_id: ref for ref in run.dataset.cases}
        spacings = [refs[case_id].load().spacing for case_id in run.split["labelled"]]
    except (SemisegError, OSError, KeyError):
        return None
    return [float(s) for s in np.median(np.array(spacings, dtype=np.float64), axis=0)] if spacings else None


def export_run(run_dir: str | Path, fmt: str, *, checkpoint: str = "best", output_dir: str | Path | None = None,
               overwrite: bool = False, data: str | Path | None = None) -> Path:
    """The run's predicting network as TorchScript or ONNX plus ``export.json``, in ``output_dir``.

    ``data`` is where the training data is now (for the sidecar's spacing), when it moved since training."""
    if fmt not in FORMATS:
        raise SemisegError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    out = Path(output_dir) if output_dir is not None else run_dir / "export" / fmt
    if (out / SIDECAR).exists() and not overwrite:
        raise SemisegError(f"{out} already holds an export; pass --overwrite or another --output")
    used = checkpoint_to_use(run_dir, checkpoint)  # a run stopped before its first validation has last.pt only
    model = load_model(run_dir, used, "cpu")
    spacing = training_spacing(run_dir, data)
    export_model(model, describe_export(model, fmt, used, run_dir, spacing), out)
    return out
