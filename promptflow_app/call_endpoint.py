"""The flow's one python tool: ask the fine-tuned model's online endpoint a question.

It is the tutorial's `integrate_with_promptflow.py`, minus its defects: the endpoint URL and key
come from a promptflow CustomConnection supplied at run time (never from a `config.py` in the
repository), nothing is logged (the tutorial logged at DEBUG, which is where keys leak), and a
failure raises with the endpoint's own error message instead of a bare status.

Request shapes (see serving/contract.py for what the endpoint accepts):

- no chat history: exactly the tutorial's request,
  `{"input_data": [question], "params": {"temperature", "max_new_tokens", "do_sample",
  "return_full_text": true}}`, whose answer is `["<question>\\n<reply>"]`; the echoed question
  is cut off so the flow answers with the reply alone, as a chat should.
- with chat history: the chat-messages form, `{"input_data": {"messages": [...]}, "params":
  {...}}`, answered with `{"role": "assistant", "content": ...}`. Phi-3 is a chat model: in
  the messages form each earlier turn reaches it through its chat template with its real role.
  Pasting the history into one text (the only way the tutorial's shape could carry it) would
  show the model a single user message containing a transcript, which it was never trained on.

Runs inside `.venv-promptflow` (promptflow and requests only; nothing from the project). No
`from __future__ import annotations` here: promptflow reads the tool's annotations at run time
to see that `connection` is a connection (a string annotation makes it pass the name instead).
"""

import ipaddress
from typing import Any
from urllib.parse import urlparse

import requests
from promptflow.connections import CustomConnection
from promptflow.core import tool

DEPLOYMENT_HEADER = "azureml-model-deployment"  # Azure's: routes to one deployment directly
DEFAULT_TIMEOUT_SECONDS = 300.0  # a 3.8B model on a CPU VM needed the tutorial's 180 s
ERROR_BODY_CHARS = 500


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def history_messages(chat_history: list[Any] | None) -> list[dict[str, str]]:
    """promptflow's chat history (`[{"inputs": {"question": ...}, "outputs": {"answer": ...}}]`)
    as chat messages. Turns with an empty side are skipped: the endpoint refuses blank messages.
    """
    messages: list[dict[str, str]] = []
    for turn in chat_history or []:
        if not isinstance(turn, dict):
            continue
        question = (turn.get("inputs") or {}).get("question")
        answer = (turn.get("outputs") or {}).get("answer")
        if isinstance(question, str) and question.strip():
            messages.append({"role": "user", "content": question})
            if isinstance(answer, str) and answer.strip():
                messages.append({"role": "assistant", "content": answer})
    # Two user messages in a row (a turn without an answer) are legal for the endpoint.
    return messages


def build_request(
    question: str,
    chat_history: list[Any] | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The request body: the tutorial's text form without history, the messages form with it."""
    history = history_messages(chat_history)
    if not history:
        return {"input_data": [question], "params": {**params, "return_full_text": True}}
    messages = [*history, {"role": "user", "content": question}]
    return {"input_data": {"messages": messages}, "params": params}


def reply_from_response(question: str, body: Any) -> str:
    """The model's reply from either response shape, without the echoed question."""
    if isinstance(body, dict) and isinstance(body.get("content"), str):
        return str(body["content"]).strip()
    if isinstance(body, list) and body and isinstance(body[0], str):
        text = body[0]
        # return_full_text: "<question>\n<reply>" (Hugging Face's pipeline glues them without
        # the newline); either way the reply is what follows the question.
        if text.startswith(question):
            text = text[len(question) :]
        return text.strip()
    raise RuntimeError(f"unexpected response from the endpoint: {str(body)[:ERROR_BODY_CHARS]}")


@tool
def call_endpoint(
    connection: CustomConnection,
    question: str,
    chat_history: list | None = None,
    deployment: str = "",
    temperature: float = 0.7,
    max_new_tokens: int = 128,
    do_sample: bool = True,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> str:
    """Send the question (and the conversation so far) to the endpoint; return the reply.

    `connection` must carry the scoring URL as config `endpoint` and the key as secret `key`.
    `deployment`, when not empty, targets that deployment directly (the smoke test checks a
    new deployment before it gets any traffic this way).
    """
    endpoint = str(connection.configs.get("endpoint") or "")
    key = str(connection.secrets.get("key") or "")
    if not endpoint or not key:
        raise ValueError(
            "connection finetune_phi_endpoint needs config 'endpoint' and secret 'key'"
        )
    params = {
        "temperature": float(temperature),
        "max_new_tokens": int(max_new_tokens),
        "do_sample": bool(do_sample),
    }
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if deployment:
        headers[DEPLOYMENT_HEADER] = deployment
    with requests.Session() as session:
        # A proxy from the environment must not see loopback traffic (nor its bearer key).
        session.trust_env = not _is_loopback(endpoint)
        response = session.post(
            endpoint,
            json=build_request(question, chat_history, params),
            headers=headers,
            timeout=timeout,
        )
    if response.status_code != 200:
        try:
            error = response.json()
        except ValueError:
            error = None
        detail = error.get("error", response.text) if isinstance(error, dict) else response.text
        target = f"deployment {deployment!r} of " if deployment else ""
        raise RuntimeError(
            f"{target}the endpoint answered HTTP {response.status_code}: "
            f"{str(detail)[:ERROR_BODY_CHARS]}"
        )
    return reply_from_response(question, response.json())
