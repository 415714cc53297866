"""`moss evaluate`: held-out losses, editing metrics and InterleavedBench answers -> JSON + MLflow.

Results go to <evaluate.output>/<label>/results.json (with generated images and predictions beside
it) and to MLflow: a new run in the config's experiment, tagged ``moss.source_run_id`` with the
training run it scores (the link), or, with ``into_training_run``, into the training run itself.
Metric keys: heldout/<split>/{loss,text_loss,image_loss,frame_loss,ppl,text_ppl,image_ppl} (and the same per
domain under heldout/by_domain/<domain>/<split>/...),
editing/{l1,l2,clip_i,dino,code_match,failure_rate}, interleavedbench/{<aspect>,average},
cost/{ms_per_image_token,ms_per_text_token} (generation time per token, on the device named in results.json).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..data.images import ImageError
from ..tracking import tags as TAG
from .cost import InferenceCost, device_name
from .inference import AdapterSource



def flat_metrics(results: dict) -> dict[str, float]:
    out = {}
    if "heldout" in results:
        from .heldout import metric_name

        out.update({f"heldout/{k}": v for k, v in results["heldout"]["metrics"].items()})
        for domain, metrics in results["heldout"].get("domains", {}).items():  # heldout/by_domain/<d>/val/image_loss
            out.update({f"heldout/by_domain/{metric_name(domain)}/{k}": v for k, v in metrics.items()})
    if "editing" in results:
        out.update({f"editing/{k}": v for k, v in results["editing"]["metrics"].items()})
    if "cost" in results:
        out.update({f"cost/{k}": v for k, v in results["cost"].items() if k.startswith("ms_per_")})
    if "interleavedbench" in results:
        out.update({f"interleavedbench/{k}": v for k, v in results["interleavedbench"].get("judge", {}).items()
                    if isinstance(v, (int, float))})
    return out


def aspect_means(scored: list[dict]) -> dict:
    """Per-aspect means over the records each aspect applies to (text aspects skip editing/subject tasks), and
    ``average``: the mean of those aspect means (each aspect weighs the same, however many records it covers)."""
    from .judge import ASPECTS, TEXT_ASPECTS, skips_text_aspects

    out = {}
    for a in ASPECTS:
        vals = [s[a] for s in scored if not (a in TEXT_ASPECTS and skips_text_aspects(s["task_name"]))]
        if vals:
            out[a] = sum(vals) / len(vals)
    if out:
        out["average"] = sum(out.values()) / len(out)
    return out


def failed_generation_scores(task_name: str) -> dict:
    """What the judge gives an answer with no text and no image: 0 on every aspect that applies (its own rule),
    so an adapter whose generation fails is averaged over the same records as one whose does not."""
    from .judge import ASPECTS, average

    scores = {a: 0.0 for a in ASPECTS}  # all five, as in the judge's replies (aspect_means skips what does not apply)
    return {**scores, "average": average(scores, task_name), "generation_failed": True}


def run_interleavedbench(model, spec, cfg: RunConfig, out_dir: Path, judge: bool, bench=None, client=None,
                         cost=None) -> dict:
    """Answer every record (and score the answers); ``bench`` / ``client``: already read / configured; ``cost``:
    an InferenceCost to add each answer's token times to."""
    from .generate import Generator, SamplingConfig
    from .interleavedbench import answer_fields, prediction_images, read_bench, write_predictions
    from .judge import JudgeClient

    if judge and client is None:
        client = JudgeClient.from_env()  # a missing endpoint fails before any generation
    items, rejects = bench or read_bench(cfg.interleavedbench.path, cfg.interleavedbench.max_records)
    g = cfg.generate
    sampling = SamplingConfig.from_section(g)
    generator = Generator(model, spec)
    bench_dir = out_dir / "interleavedbench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    outputs = [None] * len(items)

    def prompts():  # lazily: an unreadable prompt image fails its record only
        for i, item in enumerate(items):
            try:
                prompt = item.prompt()
            except (ImageError, ValueError, RuntimeError, OSError) as e:
                yield e, None
                continue
            yield prompt, sampling.with_(seed=g.seed + i)  # per-record seeds: any batch, same answers

    failed = {}
    for i, answer in generator.generate_many(prompts(), cfg.evaluate.batch_size):
        item = items[i]
        if not isinstance(answer, Exception):
            try:
                outputs[i] = answer_fields(answer, item, bench_dir)
            except (ImageError, ValueError, RuntimeError, OSError) as e:  # e.g. an image that cannot be written
                answer = e
        if isinstance(answer, Exception):  # an unreadable image, a prompt too long...
            failed[i] = {"id": item.id, "reason": f"{type(answer).__name__}: {answer}"[:300]}
            outputs[i] = {"output": "", "output_image": [], "error": failed[i]["reason"]}
            continue
        if cost is not None:
            cost.add(answer)
    if cost is not None:
        cost.retried += generator.retried
    failures = [failed[i] for i in sorted(failed)]
    path = write_predictions(items, outputs, bench_dir)
    result = {"records": len(items), "rejected": rejects, "generation_failures": failures,
              "predictions": str(path.relative_to(out_dir))}
    if client is not None:
        from .editing import load_image

        scored, judge_failures = [], []
        for item, out in zip(items, outputs):
            if out.get("error"):
                scored.append({"id": item.id, "task_name": item.task_name, **failed_generation_scores(item.task_name)})
                continue
            try:
                s = client.score(item.task_name, item.instruction, item.context,
                                 [load_image(p) for p in item.images], out["output"],
                                 prediction_images(out, bench_dir))
                scored.append({"id": item.id, "task_name": item.task_name, **s})
            except (RuntimeError, ValueError) as e:
                judge_failures.append({"id": item.id, "reason": str(e)[:300]})
        (bench_dir / "judge_scores.json").write_text(json.dumps(scored, indent=2))
        summary = aspect_means(scored)
        summary.update({"scored": len(scored) - len(failures), "failed": len(judge_failures),
                        "zero_scored": len(failures), "generation_failure_rate": len(failures) / max(len(items), 1)})
        result["judge"] = summary
        result["judge_failures"] = judge_failures
    return result


def preflight(cfg: RunConfig, judge: bool):
    """Every check that needs no model: -> (InterleavedBench records or None, judge client or None)."""
    from ..backbones import backbone_from_config
    from .interleavedbench import read_bench
    from .judge import JudgeClient

    if not (cfg.evaluate.heldout or cfg.evaluate.editing or cfg.interleavedbench.path):
        raise ConfigError("nothing to evaluate: evaluate.heldout, evaluate.editing and interleavedbench.path are all off")
    if judge and not cfg.interleavedbench.path:
        raise ConfigError("--judge scores InterleavedBench answers: set interleavedbench.path")
    try:
        backbone_from_config(cfg).generation_grid(cfg.generate.image_size)
    except ValueError as e:
        raise ConfigError(f"generate.image_size: {e}") from None
    bench = read_bench(cfg.interleavedbench.path, cfg.interleavedbench.max_records) if cfg.interleavedbench.path else None
    return bench, JudgeClient.from_env() if judge else None


def evaluate(cfg: RunConfig, source: AdapterSource, out_dir: Path, judge: bool = False) -> dict:
    """Everything the config turns on; -> results (also written to out_dir/results.json)."""
    from .heldout import heldout_metrics
    from .inference import load_model

    judge = judge or cfg.interleavedbench.judge
    bench, client = preflight(cfg, judge)
    model, spec = load_model(cfg, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"adapter": source.origin, "source_run_id": source.run_id, "backbone": cfg.backbone.model_dump(),
                     "adapter_config": cfg.adapter.model_dump() if source.path is None else
                     json.loads((Path(source.path) / "moss_config.json").read_text()),
                     "started": dt.datetime.now().isoformat(timespec="seconds")}
    t0 = time.perf_counter()
    if cfg.evaluate.heldout:
        results["heldout"] = heldout_metrics(model, spec, cfg, cfg.evaluate.split)
        if cfg.train.eval_max_batches is not None:
            results["heldout"]["note"] = ("training scored only train.eval_max_batches batches per worker; "
                                          "this is the whole split")
    cost = InferenceCost()
    if cfg.evaluate.editing:
        from .editing import evaluate_editing

        results["editing"] = evaluate_editing(model, spec, cfg, out_dir, cost)
    if cfg.interleavedbench.path:
        results["interleavedbench"] = run_interleavedbench(model, spec, cfg, out_dir, judge, bench, client, cost)
    if cost.image_tokens or cost.text_tokens:
        results["cost"] = {**cost.summary(device_name(model)), "batch_size": cfg.evaluate.batch_size}
    results["seconds"] = round(time.perf_counter() - t0, 2)
    results["metrics"] = flat_metrics(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def log_to_mlflow(cfg: RunConfig, source: AdapterSource, results: dict, out_dir: Path,
                  into_training_run: bool = False) -> str:
    """-> the MLflow run id holding the results (the training run, or a new linked run)."""
    from mlflow.entities import Metric, Param

    from ..tracking.mlflow import client, ensure_experiment, flatten, tracking_uri
    from ..tracking.redact import redact

    uri = tracking_uri(cfg.tracking.tracking_uri)
    mlc = client(uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in results["metrics"].items()]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if into_training_run:
        if source.run_id is None:
            raise ConfigError("--into-run needs --run (the training run to write into)")
        mlc.log_batch(source.run_id, metrics=metrics)
        mlc.log_artifacts(source.run_id, str(out_dir), f"evaluation/{stamp}")
        return source.run_id
    experiment_id = ensure_experiment(mlc, cfg.tracking.experiment, uri)
    tags = {TAG.KIND: "evaluation", TAG.MLFLOW_RUN_NAME: f"eval-{source.label}-{stamp}"}
    if source.run_id:
        tags[TAG.SOURCE_RUN] = source.run_id
        tags["mlflow.note.content"] = f"Evaluation of training run {source.run_id} ({source.label})"
    elif source.origin:
        tags[TAG.ADAPTER_PATH] = str(source.origin)
    run_id = mlc.create_run(experiment_id, tags=tags).info.run_id
    sections = {k: cfg.model_dump(mode="json")[k] for k in ("backbone", "generate", "evaluate", "editing",
                                                            "interleavedbench")}
    params = [Param(k, v) for k, v in flatten(redact(sections)).items()]
    status = "FAILED"
    try:
        mlc.log_batch(run_id, metrics=metrics, params=params)
        mlc.log_artifacts(run_id, str(out_dir), "evaluation")
        status = "FINISHED"
    finally:
        mlc.set_terminated(run_id, status)
    return run_id
