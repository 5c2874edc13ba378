"""Prefect tasks: one module per pipeline stage, small typed functions with declared retries.

Tasks call the core library (`finetune_phi`) and the trainer; they hold no business logic of
their own beyond wiring inputs to outputs, and they never call other tasks.
"""
