"""captioning: CNN encoder + RNN decoder image captioning, as DVC stages, Prefect flows and MLflow models."""

__version__ = "0.1.0"
