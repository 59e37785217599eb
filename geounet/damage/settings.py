"""The ``damage:`` section of a config: :class:`DamageSettings`, checked through ``geounet.schema``.

:meth:`DamageSettings.check` reports every problem of a raw section at once (unknown keys
with a did-you-mean hint, wrong types, values out of range), one line each, named by
dotted key (``damage.halo: expected an integer, got str 'x'``).
:meth:`DamageSettings.from_dict` raises them as one :class:`~geounet.schema.ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from geounet.compute.change import ChangeRules, grade
from geounet.engine.settings import DEVICE, PRECISIONS
from geounet.schema import ConfigError, check_fields

# as geounet predict, but no int8: the pre/post pass reads the network's features (torch), which
# the int8 ONNX model does not give
DAMAGE_PRECISIONS = tuple(p for p in PRECISIONS if p != "int8")
Precision = Literal[DAMAGE_PRECISIONS]  # type: ignore[valid-type]  # auto, fp32, bf16, fp16


@dataclass
class DamageSettings:
    """Thresholds and tiling of a damage run.

    Scores are unitless in [0, 1]; ``block``, ``halo``, ``tile_size``, ``overlap`` and
    ``quicklook_width`` are pixels (of the pre scene's grid, or of the PNG).
    Constructing one checks nothing: :meth:`check` (config sections) and ``run_damage``
    (before anything is written) report what :meth:`problems` finds.
    """

    thresholds: list[float] = field(default_factory=lambda: [0.35, 0.6, 0.85])  # minor, major, destroyed from
    feature_low: float = 0.2  # encoder feature distance that still counts as "no change"
    feature_high: float = 0.4  # ... and from which a place counts as fully changed
    feature_stages: list[int] = field(default_factory=lambda: [1])  # encoder stages compared (1 = first)
    prob_weight: float = 1.0  # weight of the building-presence evidence c D (0: the image change alone)
    prob_ref: float = 0.3  # pre building probability that gives the drop full weight
    match_radiometry: bool = False  # first give post the per-band mean and std of pre over the overlap
    # auto: epochs that are not 8-bit, for an 8-bit model, scaled to 8 bits (each epoch by its own percentiles, or
    # by pre's when match_radiometry has put post in pre's units; geounet.io.radiometry); none: refused
    rescale: Literal["auto", "none"] = "auto"
    min_valid_fraction: float = 0.5  # share of a footprint that needs pre and post data to be assessed
    block: int = 1024  # block side per task
    halo: int = 64  # context read around each block
    tile_size: int | None = None  # model tiles; None: the model card's
    overlap: int | None = None
    batch_size: int = 2  # tile pairs per model call
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    precision: Precision = "auto"
    quicklook_width: int = 1600  # pixels, both panels
    quiet: bool = False  # no progress bar
    head: str | None = None  # a trained damage head (geounet train, task: damage_head): grades from it, not thresholds
    web: bool = True  # also write web/: a map of pre, post and the graded buildings (geounet.web, geounet view)
    # where footprints are detected (no footprints file): class name -> factor on its probability when each
    # pixel's class is picked (as geounet predict --decision-weight); None: the model card's
    detect_decision_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.thresholds = [float(t) for t in self.thresholds]
        self.feature_stages = [int(k) for k in self.feature_stages]

    def rules(self) -> ChangeRules:
        """How the per-pixel measures become a change score (``geounet.compute.change``)."""
        return ChangeRules(self.feature_low, self.feature_high, self.prob_weight, self.prob_ref)

    def problems(self, where: str = "damage", skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """The value rules types cannot express, one line per broken rule.

        Rules that involve a field in ``skip`` (already reported, e.g. of the wrong type) are left out.
        """
        try:
            grade(np.zeros(0), tuple(self.thresholds))  # type: ignore[arg-type]
            bad_thresholds = None
        except ValueError as exc:
            bad_thresholds = str(exc).replace("grade thresholds ", "")
        rules: list[tuple[tuple[str, ...], bool, str]] = [
            (("thresholds",), bad_thresholds is not None, str(bad_thresholds)),
            (
                ("feature_stages",),
                not self.feature_stages or min(self.feature_stages) < 1,
                f"must list encoder stages, 1 = the first, got {self.feature_stages}",
            ),
            (("feature_low",), self.feature_low < 0, f"must be >= 0, got {self.feature_low}"),
            (
                ("feature_low", "feature_high"),
                self.feature_low >= self.feature_high,
                f"feature_low ({self.feature_low}) must be below feature_high ({self.feature_high})",
            ),
            (("prob_weight",), self.prob_weight < 0, f"must be >= 0, got {self.prob_weight}"),
            (("prob_ref",), self.prob_ref <= 0, f"must be > 0, got {self.prob_ref}"),
            (
                ("min_valid_fraction",),
                not 0 < self.min_valid_fraction <= 1,
                f"must be in (0, 1], got {self.min_valid_fraction}",
            ),
            (("block",), self.block < 64, f"must be >= 64, got {self.block}"),
            (("halo",), self.halo < 0, f"must be >= 0, got {self.halo}"),
            (("batch_size",), self.batch_size < 1, f"must be >= 1, got {self.batch_size}"),
            (
                ("device",),
                not DEVICE.fullmatch(str(self.device)),
                f"expected auto, cpu, cuda or cuda:N, got str {self.device!r}",
            ),
            (("quicklook_width",), self.quicklook_width < 64, f"must be >= 64, got {self.quicklook_width}"),
        ]
        out = []
        for names, broken, message in rules:
            if broken and not set(names) & set(skip):
                key = ".".join(filter(None, [where, names[0] if len(names) == 1 else ""]))
                out.append(f"{key}: {message}" if key else message)
        return out

    @classmethod
    def check(cls, raw: Any, where: str = "damage") -> tuple[DamageSettings | None, list[str]]:
        """A raw ``damage:`` mapping (parsed YAML; None = all defaults) -> ``(settings or None, problems)``.

        Every problem at once: unknown keys, types, and the value rules of :meth:`problems`
        for the fields whose type was right. The settings are None when there is any problem.
        """
        if raw is None:
            raw = {}
        good, problems = check_fields(cls, raw, where)
        if not isinstance(raw, dict):
            return None, problems
        settings = cls(**good)
        problems += settings.problems(where, skip=set(raw) - set(good))
        return (None if problems else settings), problems

    @classmethod
    def from_dict(cls, raw: Any, where: str = "damage") -> DamageSettings:
        """As :meth:`check`, raising one :class:`~geounet.schema.ConfigError` that lists every problem."""
        settings, problems = cls.check(raw, where)
        if problems:
            raise ConfigError(None, problems)
        assert settings is not None
        return settings
