"""moss-orchestrator: MoSS fine-tuning experiments on Ray, tracked in MLflow."""

__version__ = "0.1.0"
