"""After the write: rejects.jsonl, manifest.json and the summary table, all read back from the output.

Counting from what was written (not from counters kept on the way) makes the manifest a check: every
input record must be in exactly one of train, val or rejected, or ``finish`` raises.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter, defaultdict

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from ..files import arrow_fs
from .filters import STAGES
from .shards import REJECTED, SPLITS, TOKEN_STATS

FORMAT_VERSION = 1
_LIGHT = ["split", "stage", "domain", "n_answer_images", "format", *TOKEN_STATS]
#: the stages that drop a record for a size limit (data.filters bounds, data.max_seq_len); data.max_dropped_fraction
#: bounds what they may drop, of the records (and answer images) that reach `bounds`
SIZE_STAGES = ("bounds", "truncate")
_BEFORE_BOUNDS = ("parse", "schema", "image")


def _dataset(path: str):
    fs, p = arrow_fs(path)
    return pads.dataset(p, filesystem=fs, format="parquet", partitioning="hive")


def collect_stats(out_dir: str) -> dict:
    """Counts per split / stage / domain and token statistics, streaming over the light columns only."""
    by_split, by_stage = Counter(), Counter()
    by_domain: dict[str, Counter] = defaultdict(Counter)
    by_format: dict[str, Counter] = defaultdict(Counter)  # records per shape read (data.format auto)
    tokens = {s: Counter() for s in SPLITS}
    max_len = Counter()
    drops = Counter()
    data = _dataset(out_dir)
    for batch in (data.to_batches(columns=_LIGHT) if data.files else []):  # no files: nothing was read
        cols = batch.to_pydict()
        for i, split in enumerate(cols["split"]):
            by_split[split] += 1
            domain = cols["domain"][i] or "(unparsed)"
            by_domain[domain][split] += 1
            if cols["format"][i]:
                by_format[cols["format"][i]]["kept" if split != REJECTED else "rejected"] += 1
            stage, answers = cols["stage"][i], cols["n_answer_images"][i] or 0
            if stage not in _BEFORE_BOUNDS:  # the record reached the size limits
                drops["records_in"] += 1
                drops["answer_images_in"] += answers
            if split == REJECTED:
                by_stage[stage] += 1
                by_domain[domain]["rejected:" + stage] += 1
                if stage in SIZE_STAGES:
                    drops[f"records:{stage}"] += 1
                    drops[f"answer_images:{stage}"] += answers
                continue
            drops["answer_images:truncate"] += answers - cols["answer_images_kept"][i]
            for k in TOKEN_STATS:
                tokens[split][k] += cols[k][i]
            tokens[split]["truncated_records"] += cols["truncated_segments"][i] > 0
            max_len[split] = max(max_len[split], cols["n_tokens"][i])
    token_stats = {}
    for s in SPLITS:
        n = by_split[s]
        mean = round(tokens[s]["n_tokens"] / n, 1) if n else 0.0
        sums = {k: tokens[s][k] for k in (*TOKEN_STATS, "truncated_records")}  # zeros for an empty split
        token_stats[s] = dict(records=n, **sums, max_tokens=max_len[s], mean_tokens=mean)
    domains = {k: dict(v) for k, v in sorted(by_domain.items())}
    dropped = {"records_in": drops["records_in"], "answer_images_in": drops["answer_images_in"],
               "records": {s: drops[f"records:{s}"] for s in SIZE_STAGES},
               "answer_images": {s: drops[f"answer_images:{s}"] for s in SIZE_STAGES}}
    formats = {k: {"kept": v["kept"], "rejected": v["rejected"]} for k, v in sorted(by_format.items())}
    return dict(by_split=dict(by_split), by_stage=dict(by_stage), by_domain=domains, tokens=token_stats,
                dropped=dropped, formats=formats)


def check_dropped(manifest: dict, limit: float, where: str) -> None:
    """Refuse shards whose size limits dropped more than ``limit`` of the records or of the answer images
    that reached them (data.max_dropped_fraction): a sequence budget too short for the images, or
    bounds too tight, would train the run on what is left."""
    from ..config import ConfigError

    d = manifest.get("dropped")
    if d is None:  # a manifest from before this accounting
        return
    for what, total in (("records", d["records_in"]), ("answer_images", d["answer_images_in"])):
        lost = sum(d[what].values())
        if total and lost / total > limit:
            stages = ", ".join(f"{n} at `{s}`" for s, n in d[what].items() if n)
            raise ConfigError(
                f"{where}: {lost} of {total} {what.replace('_', ' ')} ({lost / total:.0%}) were dropped by the size "
                f"limits ({stages}), more than data.max_dropped_fraction={limit:g}. Raise data.max_seq_len (or "
                "lower the image size; `moss plan` shows tokens per image), loosen data.filters, and preprocess "
                "again; or set data.max_dropped_fraction if this is intended")


def stage_table(n_input: int, by_stage: dict) -> list[dict]:
    rows, n = [], n_input
    for stage in STAGES:
        r = by_stage.get(stage, 0)
        rows.append({"stage": stage, "in": n, "rejected": r, "out": n - r})
        n -= r
    return rows


def write_rejects(out_dir: str) -> int:
    """split=rejected rows -> <out_dir>/rejects.jsonl (id, stage, reason, file, line, domain); removes them."""
    fs, root = arrow_fs(out_dir)
    part = f"{root}/split={REJECTED}"
    n = 0
    with fs.open_output_stream(f"{root}/rejects.jsonl") as out:
        if fs.get_file_info(part).type == pafs.FileType.Directory:
            data = pads.dataset(part, filesystem=fs, format="parquet")
            rows = data.to_table(columns=["order", "id", "stage", "reason", "file", "line", "domain"]).sort_by("order")
            for r in rows.to_pylist():
                r.pop("order")
                out.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
                n += 1
            fs.delete_dir(part)
    return n


def fingerprint(spec) -> dict:
    """Tokenizer and image-tokenizer identity (class names and content hashes; for Emu2 the pixel
    transform), so shards can be matched to a model."""
    tok = spec.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return {
        "tokenizer": {"class": type(tok).__name__, "vocab_size": len(tok), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]},
        **spec.image_fingerprint(),
    }


def build_manifest(cfg, spec, files: list[str], n_input: int, stats: dict, n_rejects: int, engine: str, seconds: float) -> dict:
    split = stats["by_split"]
    accounted = sum(split.get(s, 0) for s in (*SPLITS, REJECTED))
    if accounted != n_input or n_rejects != split.get(REJECTED, 0):
        raise RuntimeError(f"{n_input} input records but {accounted} written ({split}); {n_rejects} in rejects.jsonl")
    return {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "engine": engine,
        "seconds": round(seconds, 2),
        "backbone": {"name": cfg.backbone.name, "checkpoint": cfg.backbone.checkpoint, **fingerprint(spec)},
        "config_hash": cfg.config_hash("backbone", "data"),
        "data_config": cfg.data.model_dump(mode="json"),
        "inputs": {"files": files, "records": n_input},
        "outputs": {s: split.get(s, 0) for s in (*SPLITS, REJECTED)},
        "stages": stage_table(n_input, stats["by_stage"]),
        "dropped": stats["dropped"],
        "domains": stats["by_domain"],
        "formats": stats["formats"],  # records per detected shape, kept / rejected (schema rejects of a known shape too)
        "tokens": stats["tokens"],
    }


def format_summary(manifest: dict, out_dir: str) -> str:
    lines = [f"preprocess: {manifest['inputs']['records']} records from {len(manifest['inputs']['files'])} file(s) "
             f"-> {out_dir} ({manifest['engine']}, {manifest['seconds']} s)", "",
             f"{'stage':<14}{'in':>9}{'rejected':>10}{'out':>9}"]
    lines += [f"{r['stage']:<14}{r['in']:>9}{r['rejected']:>10}{r['out']:>9}" for r in manifest["stages"]]
    lines += ["", f"{'domain':<20}{'train':>8}{'val':>6}{'rejected':>10}"]
    for d, c in manifest["domains"].items():
        lines.append(f"{d:<20}{c.get('train', 0):>8}{c.get('val', 0):>6}{c.get(REJECTED, 0):>10}")
    if manifest.get("formats"):
        lines.append("formats: " + ", ".join(f"{k} {v['kept']} kept / {v['rejected']} rejected"
                                             for k, v in manifest["formats"].items()))
    d = manifest["dropped"]
    lines.append(f"size limits dropped {sum(d['records'].values())} of {d['records_in']} records and "
                 f"{sum(d['answer_images'].values())} of {d['answer_images_in']} answer images (bounds / truncate: "
                 f"{d['records']['bounds']} / {d['records']['truncate']} records, {d['answer_images']['bounds']} / "
                 f"{d['answer_images']['truncate']} images)")
    lines.append("")
    for s in SPLITS:
        t = manifest["tokens"][s]
        lines.append(f"{s}: {t['records']} records, {t['n_tokens']} tokens ({t['n_target_tokens']} trained on, "
                     f"{t['n_image_tokens']} image tokens in {t['n_images']} images), mean {t['mean_tokens']} / max "
                     f"{t['max_tokens']} per record, {t['truncated_records']} truncated")
    if manifest.get("timings"):
        lines.append("time: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v} s" for k, v in manifest["timings"].items()))
    lines.append(f"shards: {out_dir}/split=train, {out_dir}/split=val; manifest.json; rejects.jsonl "
                 f"({manifest['outputs'][REJECTED]} records)")
    return "\n".join(lines)
