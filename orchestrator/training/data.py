"""Shard rows (train from Ray Data, val from the shards) -> collated micro-batches, with the position a
checkpoint records."""

from __future__ import annotations

from collections.abc import Iterator

from ..data.shards import example_from_row

#: the shard columns training reads (strings and metadata stay on disk)
TRAIN_COLUMNS = ["order", "input_ids", "labels", "image_layout"]


def train_columns(spec) -> list[str]:
    """TRAIN_COLUMNS, plus the stored pixels for backbones that embed images themselves (Emu2)."""
    return TRAIN_COLUMNS + ["pixels"] if spec.continuous_images else TRAIN_COLUMNS


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


class ValRows:
    """This worker's part of the (unsplit) val split: rows whose record order is rank mod world.

    Read once, straight from the shards with pyarrow (the path Ray Data's readers take too: a local or
    shared folder, or an object store URI), and kept as Arrow (at most eval_max_batches x micro_batch rows
    when that is set). A Ray Data execution per trial cost 15-35 s of process start-up on a small split,
    longer than the evaluation itself; the train split still streams through Ray Data.
    """

    def __init__(self, path: str, columns: list[str], micro_batch: int, rank: int, world: int,
                 max_batches: int | None, stall_timeout_s: float | None = None):
        self.path, self.columns, self.micro_batch, self.rank, self.world = path, columns, micro_batch, rank, world
        self.stall_timeout_s = stall_timeout_s
        self.limit = max_batches * micro_batch if max_batches is not None else None
        self.table = None

    def _read(self):
        import pyarrow as pa
        import pyarrow.dataset as pads

        table = pads.dataset(self.path, format="parquet").to_table(columns=self.columns).sort_by("order")
        mine = table.filter(pa.array(table["order"].to_numpy() % self.world == self.rank))
        return mine.slice(0, self.limit) if self.limit is not None else mine

    def batches(self, spec) -> Iterator[dict]:
        if self.table is None:
            reads = (self._read() for _ in range(1))  # in a thread that fails the attempt if storage hangs
            if self.stall_timeout_s is not None:
                reads = watched(reads, self.stall_timeout_s, "val")
            self.table = next(reads)
        for start in range(0, self.table.num_rows, self.micro_batch):
            yield collate_rows(spec, self.table.slice(start, self.micro_batch).to_pylist())


class DataStall(RuntimeError):
    """A worker's data stream yielded nothing for train.stall_timeout_s."""


def watched(batches: Iterator, timeout_s: float, what: str) -> Iterator:
    """``batches`` read ahead by one in a thread; DataStall when the next item takes longer than timeout_s.

    Raised in the training thread, so the attempt fails and FailureConfig restarts the worker group
    (whose placement group is released first) instead of every worker waiting forever.
    """
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def pump():
        try:
            for item in batches:
                box.put((True, item))
            box.put((True, done))
        except BaseException as e:  # handed to the training thread
            box.put((False, e))

    threading.Thread(target=pump, name=f"moss-data-{what}", daemon=True).start()
    while True:
        try:
            ok, item = box.get(timeout=timeout_s)
        except queue.Empty:
            raise DataStall(f"the {what} data stream yielded no batch for {timeout_s:g} s "
                            f"(train.stall_timeout_s): {starved_resources()}") from None
        if not ok:
            raise item
        if item is done:
            return
        yield item


def starved_resources() -> str:
    """What the cluster has left and what placement groups hold: the usual reason Ray Data waits."""
    try:
        import ray

        total, free = ray.cluster_resources(), ray.available_resources()
        held = reserved_in_placement_groups()
    except Exception as e:  # the message must not fail
        return f"(cluster state unavailable: {type(e).__name__})"
    parts = [f"{k} {free.get(k, 0):g}/{total[k]:g} free" for k in ("CPU", "GPU", "memory") if k in total]
    note = ", ".join(parts)
    if held:
        note += "; placement groups hold " + ", ".join(f"{k} {v:g}" for k, v in sorted(held.items()))
    return (note + ". Ray Data's read tasks need CPU outside the workers' placement groups; a placement group "
            "of a dead run that was never released starves them")


def reserved_in_placement_groups() -> dict[str, float]:
    import ray

    out: dict[str, float] = {}
    for pg in ray.util.placement_group_table().values():
        if pg.get("state") == "CREATED":
            for bundle in pg.get("bundles", {}).values():
                for k, v in bundle.items():
                    if k in ("CPU", "GPU"):
                        out[k] = out.get(k, 0.0) + v
    return out
