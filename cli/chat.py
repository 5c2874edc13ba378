"""`finetune-phi chat`: chat with the deployed model, the tutorial's last step.

Both ways go through the Prompt flow (`promptflow_app/`), as the tutorial does, so what a person
chats with is exactly what the rollout's smoke test checked:

- `finetune-phi chat` (terminal): a conversation with history, one turn per line; `/reset`
  forgets the conversation, `/quit` (or Ctrl-D) ends it. One flow runner stays up for the whole
  chat (`promptflow_bridge.ChatSession`), so a turn costs the endpoint's latency, not
  promptflow's start-up; the flow sends the history to the endpoint as chat messages.
- `finetune-phi chat --browser`: promptflow's own serving app and chat page (what the
  tutorial's `pf flow serve` starts; broken as released, fixed by `promptflow_app/serve.py`),
  bound to 127.0.0.1; the command prints the URL and serves until Ctrl-C.

The endpoint URL and key come from the profile's workspace at run time
(`get_or_create_endpoint(name).scoring_uri`, `get_endpoint_keys(name).primary`) and go to the
promptflow process through its environment; the key is never printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from backends import open_workspace
from finetune_phi.promptflow_bridge import ChatSession, PromptflowError, start_chat_server
from finetune_phi.settings import ConfigError, Profile
from finetune_phi.workspace import NotFound, WorkspaceError

DEFAULT_PORT = 8080  # the tutorial's `pf flow serve --port 8080`
QUIT = ("/quit", "/exit", "/q")
RESET = ("/reset",)
PROMPT = "you> "
REPLY = "phi> "


def endpoint_access(profile: Profile, name: str) -> tuple[str, str]:
    """(scoring URL, primary key) of the profile's endpoint; ConfigError if it does not exist or
    nothing is deployed there (chatting with it would only answer errors). For an existing
    local endpoint whose front is down (after a reboot), `get_or_create_endpoint` restarts it."""
    workspace = open_workspace(profile)
    try:
        deployments = workspace.endpoints.list_deployments(name)
    except NotFound:
        deployments = []
    if not deployments:
        raise ConfigError(
            f"endpoint {name!r} has no deployments: deploy a model first (`finetune-phi demo`)"
        )
    info = workspace.endpoints.get_or_create_endpoint(name)
    return info.scoring_uri, workspace.endpoints.get_endpoint_keys(name).primary


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's generation inputs the user set (the tutorial's defaults otherwise)."""
    params: dict[str, Any] = {}
    if args.greedy:
        params["do_sample"] = False
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.max_new_tokens is not None:
        params["max_new_tokens"] = args.max_new_tokens
    return params


def terminal_chat(
    session: ChatSession,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    banner: str = "",
) -> int:
    """The chat loop: one question per line, the reply on its own line; /reset, /quit.

    Reads `stdin` line by line (a person at a terminal, or a script piping questions in);
    exit status 0 at /quit or end of input, 1 if the flow itself stopped working.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    interactive = stdin.isatty()
    if banner:
        print(banner, file=stdout)
    with session:
        while True:
            if interactive:
                print(PROMPT, end="", file=stdout, flush=True)
            try:
                line = stdin.readline()
            except KeyboardInterrupt:
                print(file=stdout)
                return 0
            if not line:  # end of input (Ctrl-D)
                return 0
            question = line.strip()
            if not question:
                continue
            if question.lower() in QUIT:
                return 0
            if question.lower() in RESET:
                session.reset()
                print("(conversation forgotten)", file=stdout, flush=True)
                continue
            try:
                answer = session.ask(question)
            except PromptflowError as exc:
                print(f"finetune-phi: {exc}", file=stderr, flush=True)
                return 1
            except KeyboardInterrupt:
                print(file=stdout)
                return 0
            if answer.error is not None:
                # The turn is not kept: the next question goes with the history before it.
                print(f"(no answer: {answer.error})", file=stderr, flush=True)
                continue
            print(f"{REPLY}{answer.answer}", file=stdout, flush=True)


def browser_chat(
    endpoint_url: str,
    key: str,
    *,
    host: str,
    port: int,
    deployment: str | None,
    params: dict[str, Any],
    open_browser: bool,
    stdout: TextIO | None = None,
) -> int:
    """Serve the chat page until Ctrl-C (or until the server dies: status 1)."""
    stdout = stdout or sys.stdout
    server = start_chat_server(
        endpoint_url, key, host=host, port=port, deployment=deployment, params=params
    )
    try:
        print(f"chat in your browser: {server.url}  (Ctrl-C stops it)", file=stdout, flush=True)
        print(f"server log: {server.log_file}", file=stdout, flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(server.url)
        while server.alive():
            time.sleep(0.5)
        print(f"finetune-phi: the chat server stopped:\n{server.log_tail(key)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def run_chat_command(args: argparse.Namespace, profile: Profile) -> int:
    name = args.endpoint or profile.endpoint.name
    endpoint_url, key = endpoint_access(profile, name)
    params = generation_params(args)
    try:
        if args.browser:
            return browser_chat(
                endpoint_url,
                key,
                host=args.host,
                port=args.port,
                deployment=args.deployment,
                params=params,
                open_browser=args.open,
            )
        target = f"deployment {args.deployment!r} of " if args.deployment else ""
        banner = (
            f"Chatting with {target}endpoint {name} through the Prompt flow. "
            "/reset forgets the conversation, /quit ends it."
        )
        session = ChatSession(endpoint_url, key, deployment=args.deployment, params=params)
        return terminal_chat(session, banner=banner)
    except PromptflowError as exc:
        print(f"finetune-phi: {exc}", file=sys.stderr)
        return 1


def add_chat_parser(
    commands: Any,
    with_profile: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    chat = with_profile(
        commands.add_parser(
            "chat",
            help="chat with the deployed model through the Prompt flow (terminal or browser)",
            description="Chat with the deployed model through the Prompt flow. Examples:\n"
            "  finetune-phi chat                      # in the terminal, with history\n"
            "  finetune-phi chat --browser            # promptflow's chat page on 127.0.0.1:8080\n"
            "  finetune-phi chat --deployment green   # one deployment directly\n"
            "  finetune-phi chat --greedy             # reproducible answers\n"
            "In the terminal: /reset forgets the conversation, /quit (or Ctrl-D) ends it.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    chat.add_argument(
        "--browser", action="store_true", help="serve the chat page instead of chatting here"
    )
    chat.add_argument("--host", default="127.0.0.1", help="browser: address to bind")
    chat.add_argument("--port", type=int, default=DEFAULT_PORT, help="browser: port")
    chat.add_argument(
        "--open", action="store_true", help="browser: open the page in the default web browser"
    )
    chat.add_argument(
        "--endpoint", default=None, help="endpoint name (default: the profile's endpoint.name)"
    )
    chat.add_argument(
        "--deployment", default=None, help="chat with this deployment directly (not the traffic)"
    )
    chat.add_argument(
        "--greedy", action="store_true", help="greedy decoding: the same question, the same answer"
    )
    chat.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    chat.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap")
    chat.set_defaults(func=handler)


def main(argv: list[str] | None = None) -> int:
    """`python -m cli.chat ...`: the same command without the rest of the CLI."""
    from cli.options import parse_assignments
    from finetune_phi.settings import load_profile

    parser = argparse.ArgumentParser(prog="finetune-phi")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_profile(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--profile", default=None, help="profile name or YAML path")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        return sub

    def handler(args: argparse.Namespace) -> int:
        return run_chat_command(
            args, load_profile(args.profile, overrides=parse_assignments(args.set))
        )

    add_chat_parser(commands, with_profile, handler)
    args = parser.parse_args(["chat", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"finetune-phi: {exc}", file=sys.stderr)
        return 2
    except WorkspaceError as exc:
        print(f"finetune-phi: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
