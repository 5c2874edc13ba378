"""The base model's chat template, as the chat-data stage needs it: token counts, and whether it
has a system turn.

Training renders every conversation with the base model's chat template (TRL applies it), so
conversations are measured the same way here, and a conversation the template cannot render
faithfully is refused before training rather than changed behind the user's back: a template
without a system turn drops a system message (Phi-3-medium's does) or raises (Gemma's does).

Whether a template has a system turn is found by rendering, not by reading its source: a probe
conversation with a system message is rendered, and the template has a system turn when the
probe's system text appears in the result (a template that folds the system text into the first
user turn counts: the text reaches the model). A template that raises on it has none.

`transformers` (and `jinja2`, which renders templates) load only when a template is loaded.
Nothing here imports Prefect.
"""

from __future__ import annotations

from typing import Any

from finetune_phi.chat_data.validation import ChatCapabilities, ConversationNotRenderable
from finetune_phi.errors import UsageError

__all__ = [
    "SYSTEM_PROBE",
    "ChatTemplateCounter",
    "ChatTemplateError",
    "chat_token_counter",
    "has_system_turn",
]

SYSTEM_PROBE = "finetune-phi probe: the system text 7c1e"
"""A system message no template contains, so seeing it in a rendering means it was rendered."""

_PLAIN = [
    {"role": "user", "content": "finetune-phi probe: the user text"},
    {"role": "assistant", "content": "finetune-phi probe: the assistant text"},
]


class ChatTemplateError(UsageError, ValueError):
    """The base model's tokenizer has no chat template, or one that cannot render even a plain
    user/assistant conversation: no chat data can be prepared for it."""


def _render_errors() -> tuple[type[BaseException], ...]:
    """What rendering a conversation raises when the template refuses it: `raise_exception` in
    a template is a jinja2 TemplateError; transformers raises ValueError (an empty conversation,
    no template); a template indexing what is not there raises the rest."""
    from jinja2.exceptions import TemplateError

    return (TemplateError, ValueError, TypeError, KeyError, IndexError)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def has_system_turn(tokenizer: Any) -> bool:
    """Whether `tokenizer`'s chat template renders a system message (see the module's notes)."""
    probe = [{"role": "system", "content": SYSTEM_PROBE}, *_PLAIN]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except _render_errors():
        return False
    return isinstance(text, str) and SYSTEM_PROBE in text


class ChatTemplateCounter:
    """A `TokenCounter` that measures a conversation as training sees it (the chat template
    applied, then tokenized) and knows what the template renders (`capabilities`).

    A conversation the template refuses raises `ConversationNotRenderable` naming the model,
    which validation reports as a problem of that record.
    """

    def __init__(self, tokenizer: Any, model: str) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self._errors = _render_errors()
        try:
            tokenizer.apply_chat_template(_PLAIN, tokenize=False)
        except self._errors as error:
            if not getattr(tokenizer, "chat_template", None):
                raise ChatTemplateError(
                    f"the tokenizer of {model} has no chat template, so chat data cannot be "
                    "rendered for it: use an instruct (chat) model as model.base"
                ) from error
            raise ChatTemplateError(
                f"the chat template of {model} cannot render a plain user/assistant "
                f"conversation: {_reason(error)}"
            ) from error
        self.capabilities = ChatCapabilities(model=model, system_turn=has_system_turn(tokenizer))

    def __call__(self, messages: list[dict[str, str]]) -> int:
        try:
            # transformers 5 returns a BatchEncoding here (len() of which is its number of
            # keys), so ask for the dict explicitly and count the ids.
            encoded: Any = self.tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True
            )
        except self._errors as error:
            raise ConversationNotRenderable(
                f"the chat template of {self.model} cannot render this conversation: "
                f"{_reason(error)}"
            ) from error
        return len(encoded["input_ids"])


def chat_token_counter(tokenizer_source: str) -> ChatTemplateCounter:
    """The counter for a base model: its tokenizer loaded from `tokenizer_source` (a folder or a
    hub id). Raises OSError when the tokenizer cannot be loaded (no such folder, no network and
    no cache) and ChatTemplateError (a ValueError) when it has no usable chat template."""
    from transformers import AutoTokenizer

    return ChatTemplateCounter(AutoTokenizer.from_pretrained(tokenizer_source), tokenizer_source)
