"""Serving: the Azure ML style scoring script and the deployment server process."""
