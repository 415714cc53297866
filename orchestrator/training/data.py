"""Shard rows (from Ray Data) -> collated micro-batches, with the position a checkpoint records."""

from __future__ import annotations

from collections.abc import Iterator

from ..data.shards import example_from_row

#: the shard columns training reads (strings and metadata stay on disk)
TRAIN_COLUMNS = ["order", "input_ids", "labels", "image_layout"]


class NoData(RuntimeError):
    """A worker's shard yields no micro-batch (too few rows for micro_batch x workers)."""


def collate_rows(spec, rows: list[dict]) -> dict:
    return spec.collate([example_from_row(r) for r in rows])


def train_batches(shard, spec, micro_batch: int, shuffle_buffer: int, seed: int, epoch: int, skip: int,
                  max_epochs: int | None) -> Iterator[tuple[int, int, dict]]:
    """(epoch, index in epoch, batch) from ``epoch`` on, the first ``skip`` micro-batches of it skipped.

    Each epoch is one pass over this worker's shard, shuffled in a local buffer seeded by (seed, epoch);
    incomplete micro-batches are dropped so every worker steps the same number of times.
    """
    while max_epochs is None or epoch < max_epochs:
        n = 0
        for i, table in enumerate(shard.iter_batches(
            batch_size=micro_batch, batch_format="pyarrow", drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=(seed * 100_003 + epoch) if shuffle_buffer else None,
        )):
            n += 1
            if i >= skip:
                yield epoch, i, collate_rows(spec, table.to_pylist())
        if n == 0:
            raise NoData(f"epoch {epoch}: this worker's train shard has fewer than micro_batch={micro_batch} rows")
        epoch, skip = epoch + 1, 0


def val_batches(dataset, spec, micro_batch: int, rank: int, world: int, max_batches: int | None) -> Iterator[dict]:
    """This worker's part of the (unsplit) val split: rows whose record order is rank mod world."""
    rows, n = [], 0
    for table in dataset.iter_batches(batch_size=256, batch_format="pyarrow"):
        for row in table.to_pylist():
            if row["order"] % world != rank:
                continue
            rows.append(row)
            if len(rows) == micro_batch:
                yield collate_rows(spec, rows)
                rows, n = [], n + 1
                if max_batches is not None and n >= max_batches:
                    return
    if rows:
        yield collate_rows(spec, rows)
