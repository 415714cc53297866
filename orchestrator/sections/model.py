"""What is trained: the backbone (``backbone:``) and the adapter on it (``adapter:``)."""

from __future__ import annotations

import dataclasses
import typing
from typing import ClassVar, Literal

from pydantic import Field, create_model, field_validator, model_validator

from ..backbones.registry import backbone_names
from ..moss.config import MossConfig, check_field  # torch-free: the data workers validate configs too
from .base import Section


def is_commit_sha(value: str | None) -> bool:
    return value is not None and len(value) == 40 and all(c in "0123456789abcdef" for c in value.lower())


#: run-config keys a backbone family may take (its spec's ``config_options`` says which and what they mean to it)
FAMILY_OPTIONS = ("image_regression", "image_min_pixels", "image_max_pixels")


class BackboneSection(Section):
    #: a registered backbone (orchestrator/backbones/registry.py): chameleon, anole (chameleon with Anole's
    #: checkpoint), emu2, emu3, janus
    name: str = "chameleon"
    #: "tiny" / "small" / "large" (random-init presets) or a hub id / local path
    checkpoint: str = "tiny"
    seed: int = 0  # weights of a random-init preset (a checkpoint's weights are its own)
    # Family options: a backbone takes those its spec lists in ``config_options`` (the others refuse them)
    #: the loss of continuous image embeddings (emu2; default mse); the other backbones' image tokens are
    #: codes with a cross-entropy loss
    image_regression: Literal["mse", "cosine"] | None = None
    #: the image processor's pixel area bounds where the image area is a setting (emu3; its defaults:
    #: 512*512 and 1024*1024, 8 px per code). Every image is resized into [min, max] pixels, so these trade
    #: resolution for sequence budget: 256*256 px is 32x32 codes (~1,070 tokens), 512*512 px is 64x64
    #: (~4,170). `moss plan` shows the cost. The other backbones have a fixed image grid.
    image_min_pixels: int | None = Field(None, ge=1)
    image_max_pixels: int | None = Field(None, ge=1)  # see image_min_pixels
    #: run the checkpoint's own Python code (Emu2's hub checkpoints ship modeling_emu.py). Opt-in, and a hub
    #: id then needs ``revision`` pinned to a commit SHA, so the code that runs is the code you reviewed
    trust_remote_code: bool = False
    #: the hub commit (40 hex) or tag/branch every load of a hub checkpoint asks for; null: the default branch
    revision: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in backbone_names():
            raise ValueError(f"unknown backbone {value!r}; known: {sorted(backbone_names())}")
        return value

    @model_validator(mode="after")
    def _check(self) -> BackboneSection:
        self._check_family_options()
        pixels = {k: v for k, v in (("image_min_pixels", self.image_min_pixels),
                                    ("image_max_pixels", self.image_max_pixels)) if v is not None}
        if len(pixels) == 2 and self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"image_min_pixels={self.image_min_pixels} > image_max_pixels={self.image_max_pixels}")
        if self.trust_remote_code and self.is_hub_id() and not is_commit_sha(self.revision):
            raise ValueError(f"trust_remote_code runs {self.checkpoint}'s own Python code: pin it with backbone.revision="
                             "<40-hex commit SHA> (the hub page's 'History' lists them), got "
                             f"{self.revision or 'no revision'}")
        return self

    def is_hub_id(self) -> bool:
        """A hub repository id (not a preset, not a local folder)."""
        import os

        return (self.checkpoint not in ("tiny", "small", "large") and not os.path.isdir(self.checkpoint)
                and not self.checkpoint.startswith(("/", ".", "~")))

    def family_options(self) -> dict:
        """The family options that are set: config key -> value."""
        return {k: getattr(self, k) for k in FAMILY_OPTIONS if getattr(self, k) is not None}

    def _check_family_options(self) -> None:
        given = self.family_options()
        if not given:
            return
        from ..backbones.registry import families, spec_class  # the spec classes import torch: only when needed

        refused = [k for k in given if k not in spec_class(self.name).config_options]
        if refused:
            takers = {k: [n for n in families() if k in spec_class(n).config_options] for k in refused}
            raise ValueError(f"{self.name} does not take " + "; ".join(
                f"{k} (only {', '.join(names) or 'no registered backbone'} does)" for k, names in takers.items()))

    def options(self) -> dict:
        """Settings for get_backbone (only those set): the family's own and the hub revision / remote code."""
        out = {"revision": self.revision, "trust_remote_code": self.trust_remote_code or None}
        given = self.family_options()
        if given:
            from ..backbones.registry import spec_class

            out.update({spec_class(self.name).config_options[k]: v for k, v in given.items()})
        return {k: v for k, v in out.items() if v is not None}


class _AdapterBase(Section):
    """The adapter: MossConfig's fields, types, defaults and checks (orchestrator/moss/config.py)."""

    doc_source: ClassVar[type] = MossConfig  # where config_doc reads the fields' comments

    @field_validator("*")
    @classmethod
    def _check_field(cls, value, info):
        check_field(info.field_name, value)  # MossConfig's own check, naming adapter.<field>
        return value

    @model_validator(mode="after")
    def _together(self):
        if self.match_params is not None and self.image_rank is not None:
            raise ValueError("image_rank and match_params both set: match_params solves image_rank; give one")
        try:
            self.to_moss_config()  # MossConfig's checks across fields (e.g. match_params on a variant without image branch)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("MossConfig.")) from None
        return self

    @model_validator(mode="after")
    def _alpha_from_rank(self):
        if self.alpha_per_rank is not None:  # as MossConfig does: logged params show the alpha in use
            self.__dict__["alpha"] = float(self.alpha_per_rank * self.rank)
        return self

    def to_moss_config(self) -> MossConfig:
        return MossConfig(**self.model_dump())


def _adapter_section() -> type[Section]:
    hints = typing.get_type_hints(MossConfig)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(MossConfig)}
    return create_model("AdapterSection", __base__=_AdapterBase, __module__=__name__, **fields)


AdapterSection = _adapter_section()
