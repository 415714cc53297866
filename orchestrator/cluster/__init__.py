"""Running on a cloud cluster: its secrets (Ray token, MLflow credentials) and the head's MLflow server."""
