"""MLflow run bookkeeping (URIs, params, redaction) and, later, the sweep comparison report."""
