"""The deployment's dtype variable (the serving plan's choice) is honoured by the scoring
script: float32 on this CPU, and a value it does not know is refused at load, not ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving.score import DTYPE_ENV, Scorer


def test_float32_on_a_cpu(azureml_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DTYPE_ENV, "float32")
    scorer = Scorer.load(azureml_model_dir)
    assert scorer.model.dtype == torch.float32
    assert next(scorer.model.parameters()).device.type == "cpu"


def test_an_unknown_dtype_is_refused(
    azureml_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DTYPE_ENV, "float8")
    with pytest.raises(ValueError, match="expected one of float32, bfloat16, float16"):
        Scorer.load(azureml_model_dir)
