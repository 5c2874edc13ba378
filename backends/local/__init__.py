"""The local workspace: jobs as processes, MLflow on sqlite, an endpoint on loopback."""
