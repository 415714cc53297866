"""Every param, tag and text artifact of every run in an MLflow store, for secret canaries."""

from pathlib import Path

from mlflow.tracking import MlflowClient

TEXT = (".yaml", ".yml", ".json", ".md", ".txt", ".csv", ".jsonl")


def store_texts(uri: str, scratch: Path) -> list[str]:
    mlc = MlflowClient(uri)
    texts: list[str] = []
    for exp in mlc.search_experiments():
        for run in mlc.search_runs([exp.experiment_id], max_results=1000):
            texts += [*run.data.params.keys(), *run.data.params.values(), *run.data.tags.values()]
            dest = Path(mlc.download_artifacts(run.info.run_id, "", str(scratch / run.info.run_id)))
            texts += [p.read_text(errors="replace") for p in dest.rglob("*") if p.is_file() and p.suffix in TEXT]
    return texts
