"""Config building blocks shared by the run spec and the algorithms' context."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    batched: Literal["auto", "on", "off"] = Field("off", description=(
        "train a cohort of sampled clients in one vectorised computation (torch.func vmap over stacked weights; "
        "same numbers as one by one to float tolerance): on, off, or auto = on where it was measured to pay "
        "(models without convolutions, or any model on CUDA); algorithms opt in (Algorithm.batchable)"))
    cohort_size: int = Field(16, ge=1, le=64, description=(
        "clients per batched computation; cohorts are formed from the round's sample alone (never by worker)"))

    @field_validator("batched", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML 1.1 reads a bare on/off as a boolean: take it as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
