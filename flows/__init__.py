"""Prefect flows: wiring only. Every decision lives in `tasks/` and `finetune_phi/`."""
