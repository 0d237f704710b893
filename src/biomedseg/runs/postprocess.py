"""Typed record of ``RUN/postprocess.yaml``: the post-processing chain of a run.

The steps themselves (thresholds, morphology, watershed, gating) are applied by
:mod:`biomedseg.postprocess.ops`; this module only defines, reads and writes the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from biomedseg.core.errors import UserError
from biomedseg.io.writers import write_text
from biomedseg.runs.layout import POSTPROCESS, RunPaths


class WatershedConfig(BaseModel):
    """Split touching objects of a class (see module docstring, step 6)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    marker_threshold: float = Field(0.5, gt=0.0, le=1.0)  # of each object's maximum distance
    min_marker_area: int = Field(1, ge=1)  # smaller marker regions are ignored (noise)
    compactness: float = Field(0.0, ge=0.0)


class ClassSteps(BaseModel):
    """Steps for one foreground class; the defaults do nothing."""

    model_config = ConfigDict(extra="forbid")
    threshold: float | None = Field(None, gt=0.0, lt=1.0)
    opening_radius: int = Field(0, ge=0)
    closing_radius: int = Field(0, ge=0)
    fill_holes_area: int = Field(0, ge=-1)
    min_object_area: int = Field(0, ge=0)
    keep_largest: bool = False
    watershed: WatershedConfig | None = None

    @property
    def shapes(self) -> bool:
        """True when any step beyond the threshold is active."""
        return bool(
            self.opening_radius
            or self.closing_radius
            or self.fill_holes_area
            or self.min_object_area
            or self.keep_largest
            or (self.watershed is not None and self.watershed.enabled)
        )


class GatingConfig(BaseModel):
    """Empty-mask gating of whole images (step 7); 0 (``None`` for the classifier) disables a
    criterion. ``min_classifier_probability`` needs a model with an image-level head."""

    model_config = ConfigDict(extra="forbid")
    min_total_area: int = Field(0, ge=0)
    min_max_probability: float = Field(0.0, ge=0.0, le=1.0)
    min_classifier_probability: float | None = Field(None, ge=0.0, le=1.0)

    @property
    def uses_classifier(self) -> bool:
        return bool(self.min_classifier_probability)

    @property
    def active(self) -> bool:
        return self.min_total_area > 0 or self.min_max_probability > 0 or self.uses_classifier


class PostprocessConfig(BaseModel):
    """The post-processing chain of a run (``RUN/postprocess.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1
    classes: dict[str, ClassSteps] = Field(default_factory=dict)
    gating: GatingConfig = Field(default_factory=GatingConfig)
    tuning: dict[str, Any] | None = None  # provenance written by tune-postprocess (not used to predict)
    #: softmax temperature fitted on validation pixels (``tune-postprocess``, ``cv``): probabilities are
    #: ``softmax(logits / temperature)`` wherever they are written, averaged or thresholded; argmax is unchanged
    temperature: float = Field(default=1.0, gt=0.0)

    @field_validator("classes", mode="before")
    @classmethod
    def _str_keys(cls, v):
        return {str(k): s for k, s in (v or {}).items()}

    @property
    def is_identity(self) -> bool:
        """True when the chain is plain argmax."""
        return not self.gating.active and all(s.threshold is None and not s.shapes for s in self.classes.values())

    @property
    def needs_whole_image(self) -> bool:
        """True when a step looks at objects/whole images (not possible on streamed images)."""
        return (
            self.gating.min_total_area > 0
            or self.gating.uses_classifier
            or any(s.shapes for s in self.classes.values())
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = POSTPROCESS) -> "PostprocessConfig":
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise UserError(f"{source}: {loc}: {err['msg']}") from None


def load_postprocess(run_dir) -> PostprocessConfig | None:
    """``RUN/postprocess.yaml`` as a config, or ``None`` when the run has none."""
    path = RunPaths(run_dir).postprocess
    if not path.is_file():
        return None
    return PostprocessConfig.from_yaml(path.read_text(encoding="utf-8"), source=str(path))


def save_postprocess(cfg: PostprocessConfig, run_dir) -> Path:
    """Write ``cfg`` to ``RUN/postprocess.yaml`` (atomically); returns the path."""
    path = RunPaths(run_dir).postprocess
    write_text(
        path, "# biomedseg post-processing (applied by predict/evaluate; --no-postprocess to skip)\n" + cfg.to_yaml()
    )
    return path
