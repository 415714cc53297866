"""The model-from-code file of an adapter's pyfunc model (models.save_model_dir): MLflow copies it into the
model and runs it on load, so nothing is unpickled."""

from mlflow.models import set_model

from orchestrator.tracking.models import MossAdapterModel

set_model(MossAdapterModel())
