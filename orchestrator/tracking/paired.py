"""`moss compare --paired A B`: two evaluations of the same records, compared record by record.

A and B are `moss evaluate` outputs: a results.json, its folder, or the MLflow run holding it (an
evaluation run, or a training run evaluated with --into-run: its latest evaluation). Each metric's
difference A - B comes with a paired bootstrap interval over the records both scored
(stats.paired_bootstrap): held-out text / image / frame loss as differences of token means (each record
weighted by its targets), overall and per domain; editing metrics as means over records (a failed
generation at its metric's worst value). Pairing removes what the records share (some are hard for every
adapter), so it resolves differences that two separate intervals cannot.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .stats import LEVEL, paired_bootstrap

#: held-out losses: (metric, per-record sum, per-record count)
HELDOUT = (("text_loss", "text_sum", "n_text"), ("image_loss", "image_sum", "n_image"),
           ("frame_loss", "frame_sum", "n_frame"))
EDITING = ("l1", "l2", "clip_i", "dino", "code_match", "embedding_mse", "embedding_cos")
ALL = "(all)"  # the scope of every shared record (parenthesised, as the manifest's "(unparsed)", unlike real domains)


def load_evaluation(ref: str, uri: str | None = None) -> tuple[str, dict]:
    """(label, results) of a results.json, a folder holding one, or an MLflow run id."""
    path = Path(ref)
    if path.is_dir():
        path = path / "results.json"
    if path.is_file():
        return str(ref), json.loads(path.read_text())
    if path.suffix == ".json" or "/" in ref:
        raise LookupError(f"{ref}: no results.json there (a `moss evaluate` output folder, its results.json, "
                          "or an MLflow run id)")
    from mlflow.exceptions import MlflowException

    from . import mlflow as tracking

    mlc = tracking.client(tracking.tracking_uri(uri))
    try:
        run = mlc.get_run(ref)
    except MlflowException as e:
        raise LookupError(f"{ref}: not a results.json, a folder, nor an MLflow run ({str(e)[:200]})") from None
    names = [f.path for f in mlc.list_artifacts(ref, "evaluation")]
    if "evaluation/results.json" in names:
        artifact = "evaluation/results.json"
    else:  # evaluations logged into a training run: evaluation/<stamp>/results.json, the latest
        stamps = sorted(n for n in names if not n.endswith(".json"))
        if not stamps:
            raise LookupError(f"MLflow run {ref} holds no evaluation (run `moss evaluate --run {ref}` first)")
        artifact = f"{stamps[-1]}/results.json"
    with tempfile.TemporaryDirectory() as d:
        results = json.loads(Path(mlc.download_artifacts(ref, artifact, d)).read_text())
    return run.data.tags.get("mlflow.runName", ref), results


def _row(scope: str, metric: str, a_value: float, b_value: float, iv) -> dict:
    return {"scope": scope, "metric": metric, "records": iv.n, "a": a_value, "b": b_value, "diff": iv.mean,
            "low": iv.low, "high": iv.high, "excludes_zero": iv.excludes_zero}


def heldout_rows(a: dict, b: dict, reps: int, seed: int) -> tuple[list[dict], list[str]]:
    ha, hb = a.get("heldout"), b.get("heldout")
    if not ha or not hb or "per_record" not in ha or "per_record" not in hb:
        return [], ["held-out: not in both evaluations (or evaluated before per-record losses were kept)"]
    if ha["split"] != hb["split"]:
        raise ValueError(f"held-out: A scored split {ha['split']!r}, B split {hb['split']!r}")
    ra, rb = ({r["id"]: r for r in h["per_record"]} for h in (ha, hb))
    shared = sorted(set(ra) & set(rb))
    notes = []
    if len(shared) < max(len(ra), len(rb)):
        notes.append(f"held-out: {len(ra) - len(shared)} record(s) only in A and {len(rb) - len(shared)} only in B "
                     "are left out")
    for i in shared:
        ca, cb = ([r[n] for _, _, n in HELDOUT] for r in (ra[i], rb[i]))
        if ca != cb:
            raise ValueError(f"held-out record {i!r}: targets {ca} in A but {cb} in B (text, image, frame): the two "
                             "were scored on different shards or backbones, so their losses do not pair")
    rows = []
    scopes = [(ALL, shared)] + [(d, [i for i in shared if ra[i]["domain"] == d])
                                  for d in sorted({ra[i]["domain"] for i in shared})]
    for scope, ids in scopes:
        for metric, s, n in HELDOUT:
            w = [ra[i][n] for i in ids]
            if not sum(w):
                continue
            am = [ra[i][s] / ra[i][n] if ra[i][n] else 0.0 for i in ids]
            bm = [rb[i][s] / rb[i][n] if rb[i][n] else 0.0 for i in ids]
            iv = paired_bootstrap(am, bm, reps, seed=seed, weights=w)
            total = sum(w)
            rows.append(_row(scope, f"heldout/{ha['split']}/{metric}", sum(ra[i][s] for i in ids) / total,
                             sum(rb[i][s] for i in ids) / total, iv))
    return rows, notes


def editing_rows(a: dict, b: dict, reps: int, seed: int) -> tuple[list[dict], list[str]]:
    ea, eb = a.get("editing"), b.get("editing")
    if not ea or not eb or not ea.get("per_record") or not eb.get("per_record"):
        return [], []
    ra, rb = ({r["id"]: r for r in e["per_record"]} for e in (ea, eb))
    shared = sorted(set(ra) & set(rb))
    notes = [f"editing: failure rate {ea['metrics'].get('failure_rate', 0):.3f} (A) vs "
             f"{eb['metrics'].get('failure_rate', 0):.3f} (B); failed records score each metric's worst value"]
    if len(shared) < max(len(ra), len(rb)):
        notes.append(f"editing: {len(ra) - len(shared)} record(s) only in A and {len(rb) - len(shared)} only in B "
                     "are left out")
    rows = []
    for metric in EDITING:
        ids = [i for i in shared if ra[i].get(metric) is not None and rb[i].get(metric) is not None]
        if not ids:
            continue
        av, bv = [ra[i][metric] for i in ids], [rb[i][metric] for i in ids]
        rows.append(_row(ALL, f"editing/{metric}", sum(av) / len(av), sum(bv) / len(bv),
                         paired_bootstrap(av, bv, reps, seed=seed)))
    return rows, notes


def compare_paired(ref_a: str, ref_b: str, uri: str | None = None, reps: int = 10_000, seed: int = 0) -> dict:
    """{"a", "b", "level", "rows": [{"scope", "metric", "records", "a", "b", "diff", "low", "high",
    "excludes_zero"}], "notes"}; ValueError when the two evaluations do not pair."""
    (la, a), (lb, b) = load_evaluation(ref_a, uri), load_evaluation(ref_b, uri)
    held, notes = heldout_rows(a, b, reps, seed)
    edit, more = editing_rows(a, b, reps, seed)
    rows = held + edit
    if not rows:
        raise ValueError("nothing to pair: neither held-out per-record losses nor editing records in both")
    return {"a": la, "b": lb, "a_adapter": a.get("adapter"), "b_adapter": b.get("adapter"), "level": LEVEL,
            "reps": reps, "rows": rows, "notes": notes + more}


def markdown(result: dict, table) -> str:
    """The report (``table``: compare.md_table)."""
    pct = int(100 * result["level"])
    lines = ["# Paired comparison: A - B", "", f"- A: {result['a']} (adapter {result['a_adapter']})",
             f"- B: {result['b']} (adapter {result['b_adapter']})", "",
             f"A - B per metric over the records both scored, with a {pct}% paired bootstrap interval "
             f"({result['reps']} resamples of the records). Held-out losses are token means (records weighted by their "
             "targets); for a loss or L1/L2, negative = A better. *yes*: the interval excludes 0.", ""]
    lines.append(table(["scope", "metric", "records", "A", "B", "A - B", f"{pct}% low", f"{pct}% high", "≠ 0"],
                       [[r["scope"], r["metric"], r["records"], r["a"], r["b"], r["diff"], r["low"], r["high"],
                         {True: "yes", False: "no", None: "–"}[r["excludes_zero"]]] for r in result["rows"]]))
    lines += [""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def terminal_table(result: dict, limit: int = 20) -> str:
    out = [f"{'scope':<12} {'metric':<26} {'n':>5} {'A':>9} {'B':>9} {'A - B':>9}  95% interval"]
    for r in result["rows"][:limit]:
        mark = " *" if r["excludes_zero"] else ""
        ci = f"[{r['low']:+.4f}, {r['high']:+.4f}]" if r["low"] is not None else "–"
        out.append(f"{r['scope'][:12]:<12} {r['metric'][:26]:<26} {r['records']:>5} {r['a']:>9.4f} {r['b']:>9.4f} "
                   f"{r['diff']:>+9.4f}  {ci}{mark}")
    if len(result["rows"]) > limit:
        out.append(f"... {len(result['rows']) - limit} more in the report")
    return "\n".join(out)


def write_report(result: dict, out_dir: str | Path) -> Path:
    from .compare import md_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paired.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "paired.md").write_text(markdown(result, md_table))
    return out / "paired.md"
