"""`finetune-phi endpoint ...`: start, stop and inspect the online endpoint and its deployments.

Every command goes through the Workspace protocol where it can, so the same commands make sense
for the Azure backend; start/stop/status/keys-rotate are the local endpoint's own controls
(`up` and `down` are the same as `start` and `stop`). Keys are printed only when asked for
(`keys --show`), never logged.

`rollback` puts all live traffic back on the other colour, when that deployment still exists
(it does after a rollout with `rollout.keep_previous: true`, or while a rollout is in
progress), and moves the registry alias `champion` to the model that colour serves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from backends import open_workspace
from finetune_phi.rollout import NothingToRollBack, rollback_target
from finetune_phi.settings import ConfigError, Profile
from finetune_phi.workspace import (
    CHALLENGER,
    CHAMPION,
    TrafficState,
    Workspace,
    WorkspaceError,
)

ACTIONS = [
    "start",
    "up",
    "stop",
    "down",
    "delete",
    "status",
    "traffic",
    "keys",
    "logs",
    "invoke",
    "rollback",
]
ALIASES = {"up": "start", "down": "stop"}

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
    action = ALIASES.get(args.action, args.action)
    if action == "start":
        info = open_workspace(profile).endpoints.get_or_create_endpoint(name)
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
        print(
            open_workspace(profile).endpoints.get_deployment_logs(
                name, args.deployment, lines=args.lines
            )
        )
    elif action == "invoke":
        return _invoke(args, profile, name)
    elif action == "rollback":
        return _rollback(args, profile, name)
    return 0


def _split_model(model: str) -> tuple[str, str] | None:
    name, sep, version = model.rpartition(":")
    return (name, version) if sep and name and version else None


def _rollback(args: argparse.Namespace, profile: Profile, name: str) -> int:
    workspace = open_workspace(profile)
    try:
        return _do_rollback(workspace, args, profile, name)
    except NothingToRollBack as exc:
        print(f"finetune-phi: {exc}", file=sys.stderr)
        return 1


def _do_rollback(
    workspace: Workspace, args: argparse.Namespace, profile: Profile, name: str
) -> int:
    traffic = workspace.endpoints.get_traffic(name)
    deployments = {d.name: d for d in workspace.endpoints.list_deployments(name)}
    registered = profile.model.registered_name
    champion = workspace.registry.get_model_by_alias(registered, CHAMPION)
    champion_model = f"{registered}:{champion.version}" if champion is not None else None
    target = rollback_target(traffic, deployments, champion_model, args.deployment)
    info = deployments[target]
    if traffic.live == {target: 100}:
        print(f"{target!r} of {name} already has all live traffic: nothing to do")
        return 0
    if info.provisioning_state != "Succeeded" or not info.ready:
        why = (
            f"its provisioning state is {info.provisioning_state}"
            if info.provisioning_state != "Succeeded"
            else "it does not answer its readiness probe; is the endpoint stopped? "
            "(`finetune-phi endpoint up`)"
        )
        if not args.force:
            raise NothingToRollBack(
                f"{target!r} is not ready: {why}; traffic left as it is (--force moves it anyway)"
            )
        print(f"warning: {target!r} is not ready: {why}; moving the traffic anyway (--force)")
    before = dict(traffic.traffic)
    wanted = {deployment: (100 if deployment == target else 0) for deployment in deployments}
    applied = workspace.endpoints.set_traffic(name, TrafficState(wanted, {}))
    print(
        f"rolled back endpoint {name}: traffic {before} -> {dict(applied.traffic)}"
        + (f" (mirror {dict(traffic.mirror_traffic)} cleared)" if traffic.mirror_traffic else "")
    )

    served = _split_model(info.model)
    if served is None:
        print(f"warning: {target!r} serves {info.model!r}, not NAME:VERSION; champion not moved")
        return 0
    model_name, version = served
    previous = workspace.registry.get_model_by_alias(model_name, CHAMPION)
    if previous is not None and previous.version == version:
        print(f"champion {model_name}:{version} unchanged (it is what {target!r} serves)")
        return 0
    try:
        workspace.registry.set_model_alias(model_name, CHAMPION, version)
        if previous is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            workspace.registry.set_model_tags(
                model_name,
                previous.version,
                {"rolled_back": f"{stamp}: traffic moved to {target} ({model_name}:{version})"},
            )
            challenger = workspace.registry.get_model_by_alias(model_name, CHALLENGER)
            if challenger is not None and challenger.version == previous.version:
                workspace.registry.delete_model_alias(model_name, CHALLENGER)
    except WorkspaceError as exc:
        print(
            f"finetune-phi: traffic was rolled back, but the champion alias could not be moved "
            f"to {model_name}:{version}: {exc}",
            file=sys.stderr,
        )
        return 1
    if previous is not None:
        print(
            f"champion {model_name}: {previous.version} -> {version} "
            f"(version {previous.version} tagged rolled_back)"
        )
        print(
            f"note: the quality gate will not promote version {previous.version} again while it "
            "carries that tag (docs/runbook.md)"
        )
    else:
        print(f"champion {model_name}: -> {version}")
    return 0


def _traffic(args: argparse.Namespace, profile: Profile, name: str) -> int:
    workspace = open_workspace(profile)
    if args.values or args.mirror:  # set: unnamed deployments keep nothing, as in Azure
        current = workspace.endpoints.get_traffic(name)
        traffic = parse_percentages(args.values, "traffic") if args.values else current.traffic
        mirror = parse_percentages(args.mirror, "--mirror") if args.mirror else {}
        state = workspace.endpoints.set_traffic(name, TrafficState(dict(traffic), mirror))
    else:
        state = workspace.endpoints.get_traffic(name)
    _dump({"traffic": dict(state.traffic), "mirror_traffic": dict(state.mirror_traffic)})
    return 0


def _keys(args: argparse.Namespace, profile: Profile, name: str) -> int:
    if args.rotate:
        _local_endpoints(profile).regenerate_key(name, args.rotate)
        print(f"{args.rotate} key of {name} regenerated; the old one no longer works")
    keys = open_workspace(profile).endpoints.get_endpoint_keys(name)
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
        answer = open_workspace(profile).endpoints.invoke(name, request, deployment=args.deployment)
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
            "invoke, rollback)",
            description="Control the profile's online endpoint. Examples:\n"
            "  finetune-phi endpoint status\n"
            "  finetune-phi endpoint traffic blue=90 green=10\n"
            "  finetune-phi endpoint traffic blue=100 --mirror green=10\n"
            "  finetune-phi endpoint invoke Who founded Microsoft?\n"
            "  finetune-phi endpoint invoke --deployment green --request "
            '\'{"input_data": ["Hi"], "params": {}}\'\n'
            "  finetune-phi endpoint keys --rotate secondary\n"
            "  finetune-phi endpoint rollback                 # all traffic to the other colour\n"
            "  finetune-phi endpoint rollback --deployment blue\n"
            "  finetune-phi endpoint down                     # = stop; `up` = start\n\n"
            "Exit status: 0 done, 1 the endpoint refused or there is nothing to roll back to, "
            "2 a bad option.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    endpoint.add_argument("action", choices=ACTIONS)
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
        help="logs: whose logs; invoke: send to this deployment directly; rollback: the "
        "deployment to put all traffic on",
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
    endpoint.add_argument(
        "--force",
        action="store_true",
        help="rollback: move the traffic even if the deployment is not ready",
    )
    endpoint.add_argument("--lines", type=int, default=100, help="logs: how many lines")
    endpoint.add_argument("--request", default=None, help="invoke: a raw JSON request body")
    endpoint.add_argument(
        "--max-new-tokens", type=int, default=64, help="invoke: answer length cap for a question"
    )
    endpoint.set_defaults(func=handler)
