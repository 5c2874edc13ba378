"""The fine-tuning entry point: runs the same way locally, inside the Azure ML command job,
and by hand.

It depends only on the training stack (torch, transformers, trl, peft, datasets, mlflow) and
must not import Prefect, the backends or `finetune_phi`, because in Azure it runs from a code
snapshot in an environment that has none of them.
"""

from trainer.telemetry import telemetry_off

telemetry_off()  # before the training stack (MLflow, huggingface_hub) is imported
