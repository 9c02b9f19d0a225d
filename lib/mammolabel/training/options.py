"""Options of every training: one dataclass per method on one base, parsed in one way.

A method's options are a dataclass deriving from :class:`TrainOptions` (the fields every training
has) with the paper's configuration as defaults. :meth:`TrainOptions.parse` builds it from any
mapping (a request from 3D Slicer, the CLI's ``--set``, a checkpoint's stored options): known keys
are converted to the type of their default, unknown keys are ignored, and :meth:`problems` lists
the values the method cannot use, refused in one :class:`InputError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from mammolabel.errors import InputError
from mammolabel.training.loop import FitOptions
from mammolabel.training.precision import PRECISIONS

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
O = TypeVar("O", bound="TrainOptions")


def coerce(name: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of ``default`` or raise a clear :class:`InputError`."""
    if default is None or type(value) is type(default):
        return value
    try:
        if isinstance(default, bool):
            text = str(value).strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError(text)
            return text in _TRUE
        if isinstance(default, int):
            return int(str(value))
        if isinstance(default, float):
            return float(str(value))
        return type(default)(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"option '{name}': cannot use {value!r} as {type(default).__name__}") from e


@dataclass
class TrainOptions:
    """Fields every training has.

    Attributes:
        epochs: epochs of the training (of each stage for a staged method).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        val_fraction: share of the patients held out for validation (model selection).
        seed: the one seed of the run (split, initial weights, augmentation, batch order).
        resume: continue a stage from its last epoch when its saved run still fits (:mod:`.stages`).
        precision: ``fp32`` (the default), ``auto`` (bf16 autocast where the processor computes bf16
            natively, a GPU or a CPU with AVX512-BF16 or AMX; fp32 elsewhere) or ``bf16``
            (:mod:`mammolabel.training.precision`). bf16 is opt-in: it changed what a small hybrid
            training learnt (``tests/test_calibration.py``).
    """

    epochs: int = 10
    device: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    resume: bool = True
    precision: str = "fp32"

    @classmethod
    def parse(cls: type[O], values: dict[str, Any], task: str = "") -> O:
        """The options in ``values`` (strings converted), the rest defaults; refused with every problem at once."""
        defaults = cls()
        given = {f.name: coerce(f.name, values[f.name], getattr(defaults, f.name))
                 for f in fields(cls) if f.name in values and values[f.name] is not None}
        options = cls(**given)
        problems = options.common_problems() + options.problems()
        if problems:
            raise InputError(f"{task or cls.__name__}: " + "; ".join(problems))
        return options

    def common_problems(self) -> list[str]:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be at least 1")
        if not 0 <= self.val_fraction < 1:
            problems.append("val_fraction must lie in [0, 1)")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}")
        return problems

    def fit_options(self, epochs: int | None = None, select_start: bool = False) -> FitOptions:
        """The training loop's options for a stage of ``epochs`` epochs (default: ``epochs``); ``select_start``:
        the starting weights compete in model selection (a pretrained start that fine-tuning does not improve)."""
        return FitOptions(epochs=self.epochs if epochs is None else epochs, device=self.device, resume=self.resume,
                          precision=self.precision, select_start=select_start)

    def problems(self) -> list[str]:
        """The method's own checks: one sentence per value it cannot use."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
