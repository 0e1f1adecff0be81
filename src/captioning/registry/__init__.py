"""The MLflow side: tracking, registration, the served model, review and promotion."""
