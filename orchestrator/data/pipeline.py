"""LeafInstruct -> shards: the Ray Data graph, and the same stages as a plain single-process loop.

Ray graph (two passes over the input, both streaming):
  1. keys:  chunks -> (order, id, content hash) per record -> two group-bys -> dedupe verdicts (losers only)
  2. main:  chunks -> validate (tasks: parse, schema, image, bounds, image_dedupe, dedupe)
            -> [alignment: CLIP actor pool, GPUs when present] -> tokenize (actor pool: tokenizer + VQ
            loaded once per actor) -> write_parquet partitioned by split (train / val / rejected)
then rejects.jsonl and manifest.json are derived from what was written (see manifest.py).
"""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..backbones import backbone_from_config
from ..config import ConfigError, RunConfig
from .dedupe import find_duplicates
from ..files import arrow_fs, write_json
from .manifest import build_manifest, collect_stats, write_rejects
from .refs import ImagePolicy
from .shards import REJECTED, SPLITS
from .sources import Chunk, Limits, list_files, plan_chunks
from .tokenize import Tokenize
from .validate import chunk_keys, keys_udf, validate_chunk, validate_udf


def output_dir(cfg: RunConfig) -> str:
    return f"{cfg.data.output.rstrip('/')}/{cfg.backbone.name}"


def preprocess(cfg: RunConfig, engine: str = "ray") -> dict:
    """Run the whole pipeline; returns the manifest (also written to <output>/<backbone>/manifest.json)."""
    out = output_dir(cfg)
    reads = {"policy": ImagePolicy.from_config(cfg.data), "limits": Limits.from_config(cfg.data),
             "fmt": cfg.data.format}  # bad roots: stop now
    files = list_files(cfg.data.sources(), exclude=cfg.data.output)
    chunks = plan_chunks(files, cfg.data.chunk_bytes)
    fs, root = arrow_fs(out)
    fs.delete_dir_contents(root, missing_dir_ok=True)  # shards are derived data: a rerun replaces them
    fs.create_dir(root)
    start, timings = time.perf_counter(), {}
    run = {"ray": _run_ray, "local": _run_local}[engine]
    n_input = run(cfg, files, chunks, out, timings, reads) if chunks else 0
    t = time.perf_counter()
    stats = collect_stats(out)  # before rejects.jsonl exists: the folder holds parquet only
    n_rejects = write_rejects(out)
    spec = backbone_from_config(cfg)
    timings["manifest_s"] = round(time.perf_counter() - t, 2)
    manifest = build_manifest(cfg, spec, files, n_input, stats, n_rejects, engine, time.perf_counter() - start)
    manifest["timings"] = timings
    write_json(f"{out.rstrip('/')}/manifest.json", manifest)  # whole or not at all: train reads it
    return manifest


# ---- Ray Data ------------------------------------------------------------------------------------


def rows_written(out: str) -> int:
    """Rows in the parquet files under ``out`` so far (footers only; a file still being written is skipped)."""
    fs, root = arrow_fs(out)
    n = 0
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.is_file and info.path.endswith(".parquet"):
            try:
                with fs.open_input_file(info.path) as f:
                    n += pq.ParquetFile(f).metadata.num_rows
            except Exception:  # noqa: BLE001 - not whole yet
                continue
    return n


def _run_ray(cfg: RunConfig, files: list[str], chunks: list[Chunk], out: str, timings: dict, reads: dict) -> int:
    import ray

    from ..runtime import init_ray

    t = time.perf_counter()
    init_ray()
    timings["ray_init_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    d, f = cfg.data, cfg.data.filters
    source = ray.data.from_items([dataclasses.asdict(c) for c in chunks], override_num_blocks=len(chunks))
    keys = source.map_batches(keys_udf, batch_size=1, batch_format="pyarrow", fn_kwargs={"filters": f, **reads})
    keys = pa.concat_tables(list(keys.iter_batches(batch_format="pyarrow", batch_size=None)))
    verdicts = find_duplicates(keys, files) if f.dedupe else {}
    timings["dedupe_keys_s"], t = round(time.perf_counter() - t, 2), time.perf_counter()
    # Actor pools hold their CPUs for their lifetime: leave room for the other tasks (validate when it
    # runs apart, write always), or they wait until the actors exit and outputs pile up in the object store.
    cpus = float(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    align = bool(f.alignment.model_path)
    task_cpu, align_cpu = 0.25, (0.25 if align else 0.0)
    n_tok = d.tokenize_actors or max(1, int(cpus))
    tok_cpu = min(1.0, (cpus - task_cpu * (1 + align) - align_cpu) / n_tok)
    if tok_cpu <= 0:
        raise ConfigError(f"data.tokenize_actors={n_tok} leaves no CPU for the other stages on {cpus:g} CPUs")
    # Without the CLIP stage, validation gets the tokenizer actors' resources, so Ray fuses the two:
    # each actor task reads one chunk, validates and tokenizes it, with no object-store hop between.
    ds = source.map_batches(
        validate_udf, batch_size=1, batch_format="pyarrow", num_cpus=task_cpu if align else tok_cpu,
        fn_kwargs={"filters": f, "verdicts": verdicts, "val_fraction": d.val_fraction, "rows": d.batch_size, **reads},
    )
    if align:
        from .alignment import AlignmentScore

        ds = ds.map_batches(
            AlignmentScore, batch_size=f.alignment.batch_size, batch_format="pyarrow",
            fn_constructor_kwargs={"model_path": f.alignment.model_path, "min_score": f.alignment.min_score},
            compute=ray.data.ActorPoolStrategy(size=max(1, gpus)), num_gpus=1 if gpus else 0, num_cpus=align_cpu,
        )
    ds = ds.map_batches(
        Tokenize, batch_size=d.batch_size if align else None, batch_format="pyarrow", num_cpus=tok_cpu,
        fn_constructor_kwargs={"backbone": cfg.backbone.name, "checkpoint": cfg.backbone.checkpoint,
                               "max_seq_len": d.max_seq_len, "threads": d.torch_threads,
                               "options": cfg.backbone.options()},
        compute=ray.data.ActorPoolStrategy(size=n_tok),
    )
    from ..console import RecordsProgress

    with RecordsProgress("preprocess", lambda: rows_written(out), keys.num_rows):  # shown when the console is quiet
        ds.write_parquet(out, partition_cols=["split"], max_rows_per_file=d.rows_per_file,
                         ray_remote_args={"num_cpus": task_cpu})
    timings["main_pass_s"] = round(time.perf_counter() - t, 2)
    return keys.num_rows


# ---- the plain loop (baseline and reference) -----------------------------------------------------


class _SplitWriter:
    """part-*.parquet files per split, at most rows_per_file rows each."""

    def __init__(self, out: str, rows_per_file: int):
        self.fs, self.root = arrow_fs(out)
        self.rows_per_file, self.writers, self.counts, self.files = rows_per_file, {}, {}, {}

    def write(self, table: pa.Table) -> None:
        for split in (*SPLITS, REJECTED):
            part = table.filter(pc.equal(table["split"], split)).drop_columns(["split"])
            while part.num_rows:
                if self.counts.get(split, self.rows_per_file) >= self.rows_per_file:
                    self._roll(split, part.schema)
                room = self.rows_per_file - self.counts[split]
                self.writers[split].write_table(part.slice(0, room))
                self.counts[split] += min(room, part.num_rows)
                part = part.slice(room)

    def _roll(self, split: str, schema: pa.Schema) -> None:
        if split in self.writers:
            self.writers[split].close()
        n = self.files[split] = self.files.get(split, -1) + 1
        self.fs.create_dir(f"{self.root}/split={split}")
        path = f"{self.root}/split={split}/part-{n:05d}.parquet"
        self.writers[split] = pq.ParquetWriter(path, schema, filesystem=self.fs)
        self.counts[split] = 0

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _run_local(cfg: RunConfig, files: list[str], chunks: list[Chunk], out: str, timings: dict, reads: dict) -> int:
    d, f = cfg.data, cfg.data.filters
    policy, limits, fmt = reads["policy"], reads["limits"], reads["fmt"]
    t = time.perf_counter()
    keys = pa.concat_tables([chunk_keys(c, f, policy, limits, fmt) for c in chunks])
    verdicts = find_duplicates(keys, files) if f.dedupe else {}
    timings["dedupe_keys_s"], t = round(time.perf_counter() - t, 2), time.perf_counter()
    stages = []
    if f.alignment.model_path:
        from .alignment import AlignmentScore

        stages.append(AlignmentScore(f.alignment.model_path, f.alignment.min_score))
    stages.append(Tokenize(cfg.backbone.name, cfg.backbone.checkpoint, d.max_seq_len, threads=d.torch_threads,
                           options=cfg.backbone.options()))
    writer = _SplitWriter(out, d.rows_per_file)
    try:
        for c in chunks:
            for table in validate_chunk(c, f, verdicts, d.val_fraction, d.batch_size, policy, limits, fmt):
                for stage in stages:
                    table = stage(table)
                writer.write(table)
    finally:
        writer.close()
    timings["main_pass_s"] = round(time.perf_counter() - t, 2)
    return keys.num_rows

