"""finetune-phi: fine-tune Phi-3 on chat data, register it, roll it out blue-green, and prove
it works with Prompt flow.

This package is the core library shared by the Prefect tasks (`tasks/`), the flow
(`flows/`) and the CLI: configuration, the chat-data stage, the tiny Phi-3 builder and
the state-folder layout. It must not import Prefect at module level, so the pieces stay
usable from plain scripts and tests.
"""

from finetune_phi.telemetry import telemetry_off

__version__ = "0.1.0"

telemetry_off()  # before Prefect, MLflow or huggingface_hub is imported by anything of ours
