"""report.html in a real headless Chromium (Debian's package; `make test` installs it when missing): the
tables and plots render, sorting works, nothing logs to the console, and the runs link to the MLflow UI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from orchestrator.tracking.compare import build_report, ui_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, *args: str) -> tuple[str, list[str]]:
    """(stdout, console messages) of headless Chromium on ``url``."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's package (apt-get install chromium)")
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=3000", *args, url], capture_output=True, text=True, timeout=120)
    return p.stdout, [line for line in p.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlc = MlflowClient(uri)
    exp = mlc.create_experiment("moss", artifact_location=(tmp / "mlruns").as_uri())
    parent = mlc.create_run(exp, run_name="sw", tags={"moss.kind": "sweep", "moss.metric": "val/image_loss",
                                                      "moss.mode": "min"}).info.run_id
    for variant, values in (("lora", [2.0, 2.2, 2.1]), ("moss", [1.5, 1.7, 1.6])):
        for seed, v in enumerate(values):
            run = mlc.create_run(exp, run_name=f"a-very-long-sweep-name-{variant}-{seed}",
                                 tags={"mlflow.parentRunId": parent}).info.run_id
            for k, p in (("backbone.name", "chameleon"), ("adapter.variant", variant), ("adapter.rank", 8),
                         ("train.seed", seed), ("train.max_steps", 10), ("trainable_parameters", 100 + 200 * (variant == "moss"))):
                mlc.log_param(run, k, p)
            for step in (5, 10):
                mlc.log_metric(run, "val/image_loss", v + (10 - step) / 10, step=step)
                mlc.log_metric(run, "val/text_loss", v / 2, step=step)
            mlc.set_terminated(run, "FINISHED")
    out = tmp / "out"
    built = build_report(uri, parent_run_id=parent, out_dir=out)
    return built, out, mlc, parent


def test_the_page_renders_sorts_and_logs_nothing(report, tmp_path):
    built, out, mlc, parent = report
    page = out / "report.html"
    assert built["html"] == str(page)
    text = page.read_text()
    assert "<h2>Methods</h2>" in text and text.count("<table") >= 4 and "data:image/png;base64," in text
    assert "src=\"curves.png\"" not in text and "a-very-long-sweep-name-moss-0" in text  # inline plots, full names
    assert "\na-very-long-sweep-name-lora-1 " in built["table_text"]  # the console table too, uncut
    dom, console = browse(f"{page.as_uri()}#check", "--dump-dom")
    assert console == []
    n_plots = len(built["plots"])
    assert re.search(rf'data-images="{n_plots}/{n_plots}"', dom), "a plot did not decode"
    runs = re.search(r"<h2>All runs</h2>.*?</table>", dom, re.S).group(0)
    firsts = [int(x) for x in re.findall(r'<tr><td data-v="[^"]*">(\d+)</td>', runs)]
    assert firsts == sorted(firsts, reverse=True) == [6, 5, 4, 3, 2, 1]  # #check sorted by "#", descending
    shot = tmp_path / "shot.png"
    _, console = browse(page.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert console == [] and pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text and plots, not a blank page
    logged = {a.path for a in mlc.list_artifacts(parent, "report")}
    assert "report/report.html" in logged


def test_a_broken_page_is_caught(tmp_path):
    """The console check can fail: a page with a script error logs it."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    _, console = browse(page.as_uri(), "--dump-dom")
    assert any("undefinedFunction" in line for line in console)


def test_runs_link_to_the_mlflow_ui_of_a_server_without_credentials(report):
    from orchestrator.tracking.compare import markdown
    from orchestrator.tracking.html import html_table

    built, out, mlc, parent = report
    c = built["comparison"]
    assert ui_url("https://user:secret@mlflow.example:5000/") == "https://mlflow.example:5000"
    assert ui_url("sqlite:///x.db") is None
    doc = markdown(c, {}, table=html_table, ui=ui_url("http://bob:pw@127.0.0.1:5000"))
    r = c.rows[0]
    assert f'<a href="http://127.0.0.1:5000/#/experiments/{r.experiment_id}/runs/{r.run_id}">{r.run_name}</a>' in doc
    assert "pw" not in doc and "<a href" not in (out / "report.html").read_text()  # a sqlite store: no UI to link
    assert json.loads((out / "results.json").read_text())["methods"]


def test_hostile_names_and_tags_stay_text(tmp_path):
    """Run names, params and tags come from whoever can write to the experiment: a newline, a table tag, a plot
    line naming a local file, a script must all stay escaped text (and no file but the plots is read)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    evil = f"evil\n\n![a]({secret})\n<table><img src=x onerror=alert(1)>"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = MlflowClient(uri)
    exp = mlc.create_experiment("moss", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = mlc.create_run(exp, run_name="sw", tags={"moss.kind": "sweep", "moss.mode": "min",
                                                      "moss.metric": "val/loss\n<script>alert(2)</script>"}).info.run_id
    for seed in range(2):
        run = mlc.create_run(exp, run_name=evil, tags={"mlflow.parentRunId": parent}).info.run_id
        for k, p in (("backbone.name", f"chameleon\n![b]({secret})"), ("adapter.variant", "lora"), ("train.seed", seed)):
            mlc.log_param(run, k, p)
        mlc.log_metric(run, "val/loss", 1.0 + seed, step=1)
        mlc.set_terminated(run, "FINISHED")
    built = build_report(uri, parent_run_id=parent, out_dir=tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<img src=x" not in page and "<script>alert" not in page and "&lt;img src=x" in page
    import base64

    assert base64.b64encode(b"TOPSECRET").decode() not in page and "TOPSECRET" not in page
    dom, console = browse(Path(built["html"]).as_uri(), "--dump-dom")
    assert console == [] and "alert" not in "".join(re.findall(r"<script>.*?</script>", dom, re.S)[:-1])
