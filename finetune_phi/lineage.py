"""Lineage: the facts that identify how a model was made, and names derived from them.

Pure functions: the training job's name is a function of its inputs (dataset, base model,
trainer config), so a retried or restarted flow finds the same job instead of starting another.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from trainer.config import Hyperparameters


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def training_job_name(dataset_sha256: str, base_model: str, hp: Hyperparameters) -> str:
    """Deterministic job name: same data, base model and config -> same job."""
    return f"ft-{dataset_sha256[:8]}-{short_hash(base_model)}-{hp.config_hash()[:8]}"


def git_commit(repo: Path) -> str:
    """The commit the code ran from, or 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"
