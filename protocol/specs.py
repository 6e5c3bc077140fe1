"""Config building blocks shared by the run spec and the algorithms' context."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSpec(Strict):
    """Local training. Defaults follow the FedOBP paper's logged runs (SGD, lr 0.01, momentum 0.7, batch 32)."""

    local_epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.7, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
