"""Load a saved MLflow transformers model and answer chat messages with it (greedy by default).

Used by the demo's summary and by tests to prove that a trained model answers; the serving
path (scoring script, endpoints) has its own, fuller request handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any

    def reply(self, messages: list[dict[str, str]], max_new_tokens: int = 48) -> str:
        import torch

        prompt = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            output = self.model.generate(
                **prompt,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[0, prompt["input_ids"].shape[1] :]
        return str(self.tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()

    def ask(self, question: str, max_new_tokens: int = 48) -> str:
        return self.reply([{"role": "user", "content": question}], max_new_tokens)


def load_chat_model(mlflow_model_dir: str | Path) -> ChatModel:
    """Load the model and tokenizer from an MLflow transformers model folder."""
    import mlflow

    components = mlflow.transformers.load_model(str(mlflow_model_dir), return_type="components")
    model = components["model"].eval()
    model.generation_config.use_cache = True
    return ChatModel(model=model, tokenizer=components["tokenizer"])
