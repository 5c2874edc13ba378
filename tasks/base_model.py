"""Stage: make sure the base model is available (build the tiny Phi-3 when that is the base)."""

from __future__ import annotations

from prefect import get_run_logger, task

from finetune_phi.run_plan import resolve_base_model
from finetune_phi.settings import TINY_MODEL, Profile
from finetune_phi.state import StateLayout
from finetune_phi.tiny_model import build_default_tiny_phi3, is_built


@task(name="ensure-base-model", retries=0, timeout_seconds=600)
def ensure_base_model(profile: Profile) -> str:
    """Build the tiny Phi-3 on first use (deterministic, seconds); hub ids pass through."""
    logger = get_run_logger()
    location = resolve_base_model(profile)
    if profile.model.base != TINY_MODEL:
        logger.info("base model %s (loaded by the trainer)", location)
        return location
    layout = StateLayout(profile.state_dir)
    if is_built(layout.tiny_model_dir):
        logger.info("tiny Phi-3 already built at %s", location)
        return location
    logger.info("building the tiny Phi-3 into %s", location)
    build_default_tiny_phi3(layout.tiny_model_dir)
    return location
