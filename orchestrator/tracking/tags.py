"""The MLflow tag names this project writes and reads: the one list (docs/training.md, docs/sweeps.md)."""

# MLflow's own
PARENT = "mlflow.parentRunId"  # a sweep's child runs point at the parent run
MLFLOW_RUN_NAME = "mlflow.runName"

# every run
RUN_NAME = "moss.run_name"  # one MLflow run per run name (a sweep's parent: the sweep name)
KIND = "moss.kind"  # sweep | evaluation (training runs: unset)
BACKBONE = "moss.backbone"
VARIANT = "moss.variant"
RELAUNCHES = "moss.relaunches"  # how often `moss train` relaunched this run name

# sweeps
SWEEP = "moss.sweep"
SPACE = "moss.space"
METRIC = "moss.metric"
MODE = "moss.mode"
RESUMES = "moss.resumes"  # `moss sweep --resume` count, on the parent
TRIALS = "moss.trials"
FAILED_TRIALS = "moss.failed_trials"
TRIAL_ID = "moss.trial_id"
SAMPLED = "moss.sampled"  # the trial's sampled keys and values (JSON)
STATUS = "moss.status"  # finished | early_stopped | failed | running | retrying | interrupted
RETRIES = "moss.retries"
STOPPED_AT = "moss.stopped_at_step"  # the last step Tune saw from a trial its scheduler stopped

# evaluations
SOURCE_RUN = "moss.source_run_id"  # the training run an evaluation scored
ADAPTER_PATH = "moss.adapter_path"
