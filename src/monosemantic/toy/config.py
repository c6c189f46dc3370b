"""The toy sweep's config: sizes, sparsities and training recipe (its presets are the ``toy``
sections of the YAML presets)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monosemantic.errors import UserError, invalid_config
from monosemantic.presets import read_preset


class ToyConfig(BaseModel):
    """A sparsity sweep: n features into m hidden dimensions at ``n_sparsities`` sparsities S whose
    1/(1−S) is log-spaced from 1/(1−sparsity_min) to 1/(1−sparsity_max); importance I_i =
    importance_decay^i (1 = uniform). The plane demo (n=5, m=2, I_i = 0.9^i, as in the paper's
    introduction) trains at ``plane_sparsities``. ``cpu_threads``: torch threads for the sweep on
    CPU (OpenMP threads thrash when other processes share the cores; raise it on an idle machine).
    """

    model_config = ConfigDict(extra="forbid")

    n_features: int = Field(400, ge=1)
    n_hidden: int = Field(30, ge=1)
    importance_decay: float = Field(1.0, gt=0.0, le=1.0)
    n_sparsities: int = Field(20, ge=1)
    sparsity_min: float = 0.0
    sparsity_max: float = 0.9
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-2, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    plane_sparsities: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.8, 0.9, 0.97])
    plane_steps: int = Field(1500, ge=1)
    plane_lr: float = Field(0.1, gt=0.0)
    seed: int = 0
    device: str = "cpu"
    # measured on a shared 2-core machine: 0.08 s/step at 1 thread, 0.41 s/step at 2 (benchmarks/toy_sweep.py)
    cpu_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_sparsities(self) -> ToyConfig:
        for name, value in (("sparsity_min", self.sparsity_min), ("sparsity_max", self.sparsity_max)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1) (a feature is zero with probability S), got {value}")
        if self.sparsity_min > self.sparsity_max:
            raise ValueError(f"sparsity_min ({self.sparsity_min}) is above sparsity_max ({self.sparsity_max})")
        for value in self.plane_sparsities:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"plane_sparsities must lie in [0, 1), got {value}")
        if not self.plane_sparsities:
            raise ValueError("plane_sparsities is empty")
        return self

    @classmethod
    def preset(cls, name: str) -> ToyConfig:
        """The ``toy`` section of preset ``name`` (``configs/<name>.yaml``): ``tiny`` (tests,
        seconds); ``demo`` (the essay's 400→30 sweep, 1/(1−S) from 1 to 10, in a
        few CPU minutes: 2k steps at batch 256 with a raised, cosine-decayed learning rate);
        ``paper`` (the paper notebook's recipe — AdamW at a constant 1e-3, batch 1024, 10k steps —
        on 30 sparsities out to 1/(1−S) = 20, as the notebook sweeps; about 75 minutes on one CPU thread,
        under a minute on a GPU).

        Triangles (D_i = 2/3) form only between 1/(1−S) ≈ 1.45 and 1.85, as the spread of the dense
        end gives way to digons, and only with the long recipe: measured, ``paper`` on 20 sparsities
        from 1/(1−S) = 1.1 to 2.3 gives 23 triangles, 1–7 per model at 1.50–1.82 (1,897 s on one
        shared CPU thread), while ``demo`` and cheaper variants tried (batch 256–1024, lr 3e-3–2e-2,
        1k–4k steps) leave lone features at D_i ≈ 2/3 in the spread instead. Neither recipe forms tetrahedra
        (3/4) with uniform importance, and in this model they have no band of their own: a tiling of
        the m dimensions by tetrahedra never has the lowest loss (ideal polytopes with fitted norm
        and bias, Monte Carlo: below triangles at every 1/(1−S) from 1.2 to 10, below digons from
        1.6 on; started from 10 tetrahedra and trained, a model keeps at most 3 of them at 1.6–2.0
        and ends with more loss than a start from one feature per dimension at
        1.2–1.6 and from digons at 1.8–2.5). Between 1/(1−S) ≈ 1.6 and 3 the fall from 1 to 1/2 is
        carried by the partial spread giving way to digons, and from 3 to 5.5 every model is 30 digons
        (3 seeds each at 3.8, 4.4, 5.2: no triangle or tetrahedron)."""
        return cls.from_preset(name)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ToyConfig:
        """The preset with the given fields replaced, validated; bad values raise UserError."""
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise UserError(f"toy config: unknown option(s) {', '.join(unknown)}")
        try:
            return cls(**{**read_preset(name).get("toy", {}), **overrides})
        except ValidationError as err:
            raise invalid_config(
                err, "toy config", lambda field: f"option {field} (--{field.replace('_', '-')})"
            ) from None

    def sparsities(self) -> list[float]:
        """The sweep's S values, with 1/(1−S) log-spaced."""
        lo, hi = math.log(1.0 / (1.0 - self.sparsity_min)), math.log(1.0 / (1.0 - self.sparsity_max))
        steps = max(1, self.n_sparsities - 1)
        return [1.0 - math.exp(-(lo + (hi - lo) * k / steps)) for k in range(self.n_sparsities)]
