"""finetune-phi: fine-tune Phi-3 on chat data, register it, roll it out blue-green, and prove
it works with Prompt flow.

This package is the core library shared by the Prefect tasks (`tasks/`), the flow
(`flows/`) and the CLI: configuration, the chat-data stage, the tiny Phi-3 builder and
the state-folder layout. It must not import Prefect at module level, so the pieces stay
usable from plain scripts and tests.
"""

__version__ = "0.1.0"
