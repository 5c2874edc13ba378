"""`finetune-phi endpoint ...`: start, stop and inspect the online endpoint and its deployments.

Every command goes through the Workspace protocol where it can, so the same commands make sense
for the Azure backend; start/stop/status/keys-rotate are the local endpoint's own controls.
Keys are printed only when asked for (`keys --show`), never logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from backends import open_workspace
from backends.workspace import TrafficState, WorkspaceError
from finetune_phi.settings import ConfigError, Profile

ProfileLoader = Callable[[argparse.Namespace], Profile]


def parse_percentages(items: list[str], what: str) -> dict[str, int]:
    """`blue=90 green=10` -> {"blue": 90, "green": 10}; the rules are the backend's to check."""
    result: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ConfigError(f"{what} {item!r}: expected DEPLOYMENT=PERCENT, e.g. blue=90")
        result[name] = int(value)
    return result


def _local_endpoints(profile: Profile) -> Any:
    if profile.backend.kind != "local":
        raise ConfigError("start, stop, status and key rotation are local endpoint commands")
    from backends.local.endpoint.control import LocalEndpoints

    return LocalEndpoints(profile.state_dir)


def _dump(data: Any) -> None:
    print(yaml.safe_dump(data, sort_keys=False), end="")


def run_endpoint_command(args: argparse.Namespace, profile: Profile) -> int:
    name = args.endpoint or profile.endpoint.name
    action = args.action
    if action == "start":
        info = open_workspace(profile).get_or_create_endpoint(name)
        print(f"endpoint {name} serving at {info.scoring_uri}")
    elif action == "stop":
        _local_endpoints(profile).stop_endpoint(name)
        print(f"endpoint {name} stopped (state kept; `endpoint start` brings it back)")
    elif action == "delete":
        _local_endpoints(profile).delete_endpoint(name)
        print(f"endpoint {name} deleted")
    elif action == "status":
        _dump(_local_endpoints(profile).status(name))
    elif action == "traffic":
        return _traffic(args, profile, name)
    elif action == "keys":
        return _keys(args, profile, name)
    elif action == "logs":
        if not args.deployment:
            raise ConfigError("endpoint logs needs --deployment NAME")
        print(open_workspace(profile).get_deployment_logs(name, args.deployment, lines=args.lines))
    elif action == "invoke":
        return _invoke(args, profile, name)
    return 0


def _traffic(args: argparse.Namespace, profile: Profile, name: str) -> int:
    workspace = open_workspace(profile)
    if args.values or args.mirror:  # set: unnamed deployments keep nothing, as in Azure
        current = workspace.get_traffic(name)
        traffic = parse_percentages(args.values, "traffic") if args.values else current.traffic
        mirror = parse_percentages(args.mirror, "--mirror") if args.mirror else {}
        state = workspace.set_traffic(name, TrafficState(dict(traffic), mirror))
    else:
        state = workspace.get_traffic(name)
    _dump({"traffic": dict(state.traffic), "mirror_traffic": dict(state.mirror_traffic)})
    return 0


def _keys(args: argparse.Namespace, profile: Profile, name: str) -> int:
    if args.rotate:
        _local_endpoints(profile).regenerate_key(name, args.rotate)
        print(f"{args.rotate} key of {name} regenerated; the old one no longer works")
    keys = open_workspace(profile).get_endpoint_keys(name)
    if args.show:
        _dump({"primary": keys.primary, "secondary": keys.secondary})
    elif not args.rotate:
        print("keys are not printed unless asked: `finetune-phi endpoint keys --show`")
    return 0


def _invoke(args: argparse.Namespace, profile: Profile, name: str) -> int:
    question = " ".join(args.values)
    if args.request:
        try:
            request = json.loads(args.request)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--request is not valid JSON: {exc}") from None
    elif question:
        request = {
            "messages": [{"role": "user", "content": question}],
            "params": {"max_new_tokens": args.max_new_tokens, "do_sample": False},
        }
    else:
        raise ConfigError("endpoint invoke needs a question or --request JSON")
    try:
        answer = open_workspace(profile).invoke(name, request, deployment=args.deployment)
    except WorkspaceError as exc:
        print(f"finetune-phi: {exc}", file=sys.stderr)
        return 1
    if question and not args.request and isinstance(answer, dict):
        print(answer.get("content", ""))
    else:
        print(json.dumps(answer, ensure_ascii=False))
    return 0


def add_endpoint_parser(
    commands: Any,
    with_profile: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    endpoint = with_profile(
        commands.add_parser(
            "endpoint",
            help="start, stop and inspect the online endpoint (status, traffic, keys, logs, "
            "invoke)",
            description="Control the profile's online endpoint. Examples:\n"
            "  finetune-phi endpoint status\n"
            "  finetune-phi endpoint traffic blue=90 green=10\n"
            "  finetune-phi endpoint traffic blue=100 --mirror green=10\n"
            "  finetune-phi endpoint invoke Who founded Microsoft?\n"
            "  finetune-phi endpoint invoke --deployment green --request "
            '\'{"input_data": ["Hi"], "params": {}}\'\n'
            "  finetune-phi endpoint keys --rotate secondary",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    endpoint.add_argument(
        "action",
        choices=["start", "stop", "delete", "status", "traffic", "keys", "logs", "invoke"],
    )
    endpoint.add_argument(
        "values",
        nargs="*",
        metavar="ARG",
        help="traffic: DEPLOYMENT=PERCENT...; invoke: the question",
    )
    endpoint.add_argument(
        "--endpoint", default=None, help="endpoint name (default: the profile's endpoint.name)"
    )
    endpoint.add_argument(
        "--deployment",
        default=None,
        help="logs: whose logs; invoke: send to this deployment directly",
    )
    endpoint.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="DEPLOYMENT=PERCENT",
        help="traffic: mirror a share of requests to a 0%% deployment",
    )
    endpoint.add_argument(
        "--rotate", choices=["primary", "secondary"], default=None, help="keys: regenerate this key"
    )
    endpoint.add_argument("--show", action="store_true", help="keys: print them")
    endpoint.add_argument("--lines", type=int, default=100, help="logs: how many lines")
    endpoint.add_argument("--request", default=None, help="invoke: a raw JSON request body")
    endpoint.add_argument(
        "--max-new-tokens", type=int, default=64, help="invoke: answer length cap for a question"
    )
    endpoint.set_defaults(func=handler)
