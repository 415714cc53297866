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

from .filters import STAGES
from .shards import REJECTED, SPLITS, TOKEN_STATS

FORMAT_VERSION = 1
_LIGHT = ["split", "stage", "domain", *TOKEN_STATS]


def arrow_fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def _dataset(path: str):
    fs, p = arrow_fs(path)
    return pads.dataset(p, filesystem=fs, format="parquet", partitioning="hive")


def collect_stats(out_dir: str) -> dict:
    """Counts per split / stage / domain and token statistics, streaming over the light columns only."""
    by_split, by_stage = Counter(), Counter()
    by_domain: dict[str, Counter] = defaultdict(Counter)
    tokens = {s: Counter() for s in SPLITS}
    max_len = Counter()
    data = _dataset(out_dir)
    for batch in (data.to_batches(columns=_LIGHT) if data.files else []):  # no files: nothing was read
        cols = batch.to_pydict()
        for i, split in enumerate(cols["split"]):
            by_split[split] += 1
            domain = cols["domain"][i] or "(unparsed)"
            by_domain[domain][split] += 1
            if split == REJECTED:
                by_stage[cols["stage"][i]] += 1
                by_domain[domain]["rejected:" + cols["stage"][i]] += 1
                continue
            for k in TOKEN_STATS:
                tokens[split][k] += cols[k][i]
            tokens[split]["truncated_records"] += cols["truncated_segments"][i] > 0
            max_len[split] = max(max_len[split], cols["n_tokens"][i])
    token_stats = {}
    for s in SPLITS:
        n = by_split[s]
        mean = round(tokens[s]["n_tokens"] / n, 1) if n else 0.0
        token_stats[s] = dict(records=n, **tokens[s], max_tokens=max_len[s], mean_tokens=mean)
    domains = {k: dict(v) for k, v in sorted(by_domain.items())}
    return dict(by_split=dict(by_split), by_stage=dict(by_stage), by_domain=domains, tokens=token_stats)


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
        "domains": stats["by_domain"],
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
