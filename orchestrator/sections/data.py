"""Preprocessing: the records' source, the shards, and the filters records must pass (``data:``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigError, Section


class AlignmentSection(Section):
    """Optional text-image alignment filter with a CLIP model from a local path (off when model_path is null)."""

    model_path: str | None = None  # local CLIP checkpoint; null: the filter is off
    min_score: float = Field(0.2, ge=-1.0, le=1.0)  # cosine similarity of CLIP text and image embeddings
    batch_size: int = Field(32, ge=1)  # image-text pairs per CLIP forward


class FilterSection(Section):
    """Bounds that reject a record (each rejection counted with its reason)."""

    max_text_chars: int = Field(20_000, ge=1)  # all text of a record together
    min_output_chars: int = Field(0, ge=0)  # output text; 0 allows image-only answers
    min_images: int = Field(0, ge=0)  # images per record (input and output together)
    max_images: int = Field(16, ge=0)  # images per record; more is a bounds reject before any image is read
    min_image_side: int = Field(16, ge=1)  # pixels
    max_image_pixels: int = Field(40_000_000, ge=1)  # checked from the header, before decoding
    max_image_bytes: int = Field(64 * 2**20, ge=1)  # bytes of one encoded image
    #: two images on the same side of a record (input or output) within this pHash Hamming distance are
    #: near-duplicates and reject the record; -1 turns the check off
    phash_max_distance: int = Field(4, ge=-1, le=64)
    dedupe: bool = True  # drop records whose content repeats an earlier one, and reused ids
    alignment: AlignmentSection = Field(default_factory=AlignmentSection)

    @model_validator(mode="after")
    def _check(self) -> FilterSection:
        if self.min_images > self.max_images:
            raise ValueError(f"min_images={self.min_images} > max_images={self.max_images}")
        return self


class DataSection(Section):
    #: JSONL / JSON / parquet: a path, glob or directory (local, s3://, gs://, hf://datasets/...), or a list
    source: str | list[str] | None = None
    output: str = "shards"  # shards go to <output>/<backbone>/
    #: record shape: auto (each record's own, by its keys; counted per format in the manifest), or one of
    #: segments / placeholders (ours), sharegpt (ShareGPT / LLaVA conversations), messages (LLaMA-Factory);
    #: a record of another shape is then a `schema` reject
    format: Literal["auto", "segments", "placeholders", "sharegpt", "messages"] = "auto"
    max_seq_len: int = Field(2048, ge=8)  # tokens per record; longer ones lose whole trailing segments (truncate stage)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # by a stable hash of the record id
    filters: FilterSection = Field(default_factory=FilterSection)
    chunk_bytes: int = Field(128 * 2**10, ge=1024)  # input is read in byte ranges of this size, in parallel
    batch_size: int = Field(16, ge=1)  # records per tokenizer batch
    tokenize_actors: int | None = Field(None, ge=1)  # actor pool size; null: the cluster's CPU count
    #: torch intra-op threads per tokenizer (each actor, or the --local loop); null: torch's default.
    #: 1 is fastest for the tiny VQs on a 2-core machine (2 threads measured slower there)
    torch_threads: int | None = Field(1, ge=1)
    rows_per_file: int = Field(4096, ge=1)  # rows per shard file at most
    #: train / sweep refuse shards whose manifest shows more than this fraction of records, or of answer
    #: images, dropped by the `bounds` and `truncate` stages (sequence budget or image limits set too tight)
    max_dropped_fraction: float = Field(0.2, ge=0.0, le=1.0)
    #: folders local image paths must resolve into (symlinks followed); null: the folder of each data file.
    #: Anything else (an absolute path elsewhere, ../ out of the root, a FIFO or device) is an `image` reject
    image_roots: list[str] | None = None
    #: URI schemes image references may use; null: those of data.source (a local source allows local files
    #: only). http/https only when listed; fsspec chains ("a::b") never
    allowed_schemes: list[str] | None = None
    #: a JSON line longer than this is a `parse` reject, never decoded
    max_record_bytes: int = Field(16 * 2**20, ge=1024)
    #: formats read whole (a JSON array, a parquet row group, decompressed) above this are one counted
    #: `parse` reject, never loaded
    max_file_bytes: int = Field(2**30, ge=1024)

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list of sources")
        return v

    def sources(self) -> list[str]:
        if self.source is None:
            raise ConfigError("data.source is not set: give a file, glob or directory of LeafInstruct records")
        return [self.source] if isinstance(self.source, str) else list(self.source)
