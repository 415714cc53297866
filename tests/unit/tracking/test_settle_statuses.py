"""A sweep's children end with the MLflow status their moss.status tag names, whoever wrote last."""

from __future__ import annotations

from orchestrator.sweeps.status import settle_statuses
from orchestrator.tracking import tags as TAG


def test_children_get_the_status_their_tag_names(store):
    uri, mlc, exp = store
    parent = mlc.create_run(exp).info.run_id
    runs = {}
    for tag, raced in (("finished", "FAILED"), ("early_stopped", "FAILED"), ("failed", "FAILED"),
                       ("early_stopped", "KILLED"), ("retrying", "RUNNING")):
        run = mlc.create_run(exp, tags={TAG.PARENT: parent, TAG.STATUS: tag}).info.run_id
        if raced != "RUNNING":
            mlc.set_terminated(run, status=raced, end_time=1234)
        runs[run] = tag
    other = mlc.create_run(exp, tags={TAG.STATUS: "finished"}).info.run_id  # not a child of this sweep
    mlc.set_terminated(other, status="FAILED")
    assert settle_statuses(uri, parent) == 2
    want = {"finished": "FINISHED", "early_stopped": "KILLED", "failed": "FAILED", "retrying": "RUNNING"}
    for run, tag in runs.items():
        info = mlc.get_run(run).info
        assert info.status == want[tag]
        assert info.status == "RUNNING" or info.end_time == 1234  # the trial's end time is kept
    assert mlc.get_run(other).info.status == "FAILED"
