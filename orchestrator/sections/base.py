"""What every section shares: strict pydantic models, and the error of a config that cannot run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config that cannot run; the CLI prints it and exits with code 2."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
