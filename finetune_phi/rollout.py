"""Blue-green rollout: a pure plan, then a thin executor that undoes everything on failure.

    plan_rollout(traffic, deployments, model, settings) -> RolloutPlan      (pure)
    execute_rollout(workspace, endpoint, model, plan, settings, probe)     (side effects)

The new model goes to the colour that is not live, at 0%; it must become ready and answer a
direct request (the `azureml-model-deployment` header) before it sees any live traffic; an
optional mirror phase copies requests to it; then traffic shifts in steps, each read back and
followed by probe requests. Any failure restores the traffic and mirror maps exactly as they
were, removes the new deployment and raises `RolloutFailed` with the reason.

A rollout killed midway (the flow's process died) is finished by the next run for the same
model: a deployment that already serves the model with live traffic is resumed from its current
share (no redeploy, the remaining steps, then retirement), a deployment that already serves it
ready at 0% is not deployed again, and a model that already has all traffic still gets the
champion alias and its leftover deployments retired. A resumed rollout that fails restores the
traffic as it found it and keeps the deployment (it was serving before that run).

Rollback is explicit code here rather than Prefect transaction hooks: hooks only undo tasks
that completed, and a retried step would run again against an endpoint already half changed.
The Prefect task that calls this has no retries for the same reason.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_phi.errors import FinetunePhiError
from finetune_phi.serving_plan import ServingPlan, ServingPlanError, phi3_parameters
from finetune_phi.settings import Profile, RolloutSettings
from finetune_phi.workspace import (
    CHALLENGER,
    CHAMPION,
    DeploymentInfo,
    DeploymentSpec,
    ModelRegistry,
    ModelVersion,
    TrafficState,
    Workspace,
    WorkspaceError,
)

COLOURS = ("blue", "green")
# Waits without a serving plan (the tiny model on this machine answers in well under a second).
DEFAULT_READINESS_SECONDS = 600
DEFAULT_PROBE_SECONDS = 60.0

# What a rollout asks a new deployment: the tutorial's request shape, greedy and short.
DEFAULT_PROBE: dict[str, Any] = {
    "input_data": ["Who founded Microsoft?"],
    "params": {"max_new_tokens": 32, "do_sample": False, "return_full_text": False},
}


def other_colour(colour: str) -> str | None:
    """blue <-> green; None for a deployment that is not one of the two colours."""
    if colour not in COLOURS:
        return None
    return COLOURS[1 - COLOURS.index(colour)]


class RolloutPlanError(FinetunePhiError, ValueError):
    """The endpoint is in a state no plan can start from (e.g. blue and green both live)."""


class RolloutFailed(FinetunePhiError, RuntimeError):
    """The rollout was undone; the message says at which step and why."""


@dataclass(frozen=True)
class RolloutPlan:
    model: str  # "<name>:<version>"
    new_deployment: str | None  # None: nothing to do, the model already has all traffic
    previous: Mapping[str, int]  # live traffic before the rollout
    mirror_percent: int
    traffic_steps: tuple[Mapping[str, int], ...]
    retire: tuple[str, ...]  # deployments deleted after success
    reason: str = ""
    resumed_from: int = 0  # the live percent the new deployment had already (a resumed rollout)

    def describe(self) -> list[str]:
        if self.new_deployment is None:
            return [f"nothing to do: {self.reason}"] + [f"retire {name!r}" for name in self.retire]
        if self.resumed_from:
            lines = [f"resume: {self.new_deployment!r} serves {self.model} at {self.resumed_from}%"]
        else:
            lines = [f"deploy {self.model} as {self.new_deployment!r} at 0%"]
        lines.append(f"test {self.new_deployment!r} directly")
        if self.mirror_percent:
            lines.append(f"mirror {self.mirror_percent}% of requests to {self.new_deployment!r}")
        lines += [f"traffic -> {dict(step)}" for step in self.traffic_steps]
        lines += [f"retire {name!r}" for name in self.retire]
        return lines


def split_remainder(weights: Mapping[str, int], total: int) -> dict[str, int]:
    """Share `total` percent among `weights` proportionally, in integers summing to `total`
    (largest remainder; ties broken by name so the result is deterministic)."""
    if total == 0 or not weights:
        return {name: 0 for name in weights}
    whole = sum(weights.values())
    exact = {name: total * w / whole for name, w in weights.items()}
    shares = {name: int(value) for name, value in exact.items()}
    left = total - sum(shares.values())
    order = sorted(exact, key=lambda n: (-(exact[n] - shares[n]), n))
    for name in order[:left]:
        shares[name] += 1
    return shares


def plan_rollout(
    current: TrafficState,
    deployments: Mapping[str, str],
    model: str,
    settings: RolloutSettings,
) -> RolloutPlan:
    """The steps that move all live traffic to `model`.

    Args:
        current: the endpoint's traffic and mirror maps now.
        deployments: every deployment of the endpoint -> the model it serves ("name:version").
        model: the model version to roll out ("name:version").
        settings: steps, mirror and retirement choices.
    """
    live = current.live
    previous = dict(live)
    serving_model = [name for name in live if deployments.get(name) == model]
    if serving_model and live.get(serving_model[0]) == 100:
        # A rollout killed after its last traffic step left the old colour behind at 0%.
        serving = serving_model[0]
        leftovers = () if settings.keep_previous else tuple(sorted(set(deployments) - {serving}))
        return RolloutPlan(
            model, None, previous, 0, (), leftovers, reason=f"{serving!r} serves it at 100%"
        )
    resumable = [name for name in serving_model if name in COLOURS]
    if resumable:
        return _resume_plan(live, deployments, model, resumable[0], settings)
    free = [colour for colour in COLOURS if colour not in live]
    if not free:
        raise RolloutPlanError(
            f"traffic is split across {sorted(live)}: finish or undo that rollout first"
        )
    new = free[0]
    steps: list[dict[str, int]] = []
    for percent in settings.traffic_steps if live else (100,):
        step = {new: percent, **split_remainder(live, 100 - percent)}
        steps.append(step)
    mirror = settings.mirror_percent if live else 0  # mirroring needs live traffic to copy
    keep = set(live) if settings.keep_previous else set()
    retire = tuple(sorted(name for name in deployments if name != new and name not in keep))
    return RolloutPlan(model, new, previous, mirror, tuple(steps), retire)


def _resume_plan(
    live: Mapping[str, int],
    deployments: Mapping[str, str],
    model: str,
    new: str,
    settings: RolloutSettings,
) -> RolloutPlan:
    """The rest of a rollout that was killed while `new` (serving `model`) had part of the live
    traffic: the steps above its share, no mirror phase (a live deployment cannot be a mirror)."""
    share = live[new]
    others = {name: pct for name, pct in live.items() if name != new}
    steps = tuple(
        {new: percent, **split_remainder(others, 100 - percent)}
        for percent in settings.traffic_steps
        if percent > share
    )
    keep = set(others) if settings.keep_previous else set()
    retire = tuple(sorted(name for name in deployments if name != new and name not in keep))
    reason = f"an interrupted rollout left {model} on {new!r} at {share}%"
    return RolloutPlan(model, new, dict(live), 0, steps, retire, reason, resumed_from=share)


# --------------------------------------------------------------------------- execution


@dataclass
class RolloutReport:
    plan: RolloutPlan
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0
    final_traffic: Mapping[str, int] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)  # where -> the smoke test's result


def _summary(result: Any) -> str:
    return str(getattr(result, "summary", result))


def _check_answer(response: Any) -> None:
    """A probe answer must be the tutorial's shape: a list with one string. What it says is
    the quality gate's business, not the rollout's (an undertrained model may say nothing)."""
    if not (isinstance(response, list) and len(response) == 1 and isinstance(response[0], str)):
        raise WorkspaceError(f"unexpected response shape: {str(response)[:200]}")


def _wait_ready(workspace: Workspace, endpoint: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = workspace.endpoints.get_deployment(endpoint, name)
        if info is not None and info.ready:
            return
        if info is not None and info.provisioning_state == "Failed":
            raise WorkspaceError(f"deployment {name!r} failed to provision")
        if time.monotonic() > deadline:
            raise WorkspaceError(f"deployment {name!r} not ready after {timeout:.0f} s")
        time.sleep(1.0)


THROTTLED_PROBE_RETRIES = 3


def _probe(
    workspace: Workspace,
    endpoint: str,
    probe: Mapping[str, Any],
    count: int,
    deployment: str | None = None,
    *,
    timeout: float = 60.0,
) -> tuple[int, str | None]:
    """Send `count` probe requests; the number that failed and the first failure's reason.

    A probe the endpoint throttled (429: the deployment is full of live requests) says
    nothing about the model, so it is sent again after a pause (1, 2, 4 s) before it counts
    as a failure; every other error counts at once (a 424 model error, a 408 past the
    request timeout: the new deployment is what failed)."""
    failures, first = 0, None
    for _ in range(count):
        for attempt in range(THROTTLED_PROBE_RETRIES + 1):
            try:
                answer = workspace.endpoints.invoke(
                    endpoint, probe, deployment=deployment, timeout=timeout
                )
                _check_answer(answer)
            except WorkspaceError as exc:
                if exc.status == 429 and attempt < THROTTLED_PROBE_RETRIES:
                    time.sleep(2.0**attempt)
                    continue
                failures += 1
                first = first or str(exc)
            break
    return failures, first


def execute_rollout(
    workspace: Workspace,
    endpoint: str,
    model: ModelVersion,
    plan: RolloutPlan,
    settings: RolloutSettings,
    *,
    probe: Mapping[str, Any] = DEFAULT_PROBE,
    smoke_test: Callable[[str | None], Any] | None = None,
    serving: ServingPlan | None = None,
    log: Callable[[str], None] = print,
) -> RolloutReport:
    """Carry out `plan`; on any failure restore the endpoint exactly and raise RolloutFailed.

    `serving` (the model's serving plan) sizes the waits: how long the new deployment may take
    to become ready and how long one probe may take; it also goes to the deployment (dtype,
    request timeout, concurrency, probe delays). Without it: DEFAULT_READINESS_SECONDS and
    DEFAULT_PROBE_SECONDS, right for the tiny model.

    `smoke_test(deployment)` (e.g. the Prompt flow asking fact questions) runs against the new
    deployment directly before it gets traffic, and through the endpoint (`None`) once it has
    all of it; it returns its result (kept in the report, logged by its `summary`) or raises,
    which rolls everything back.
    """
    report = RolloutReport(plan)
    started = time.monotonic()
    readiness_seconds = settings.readiness_timeout_seconds or (
        serving.readiness_timeout_seconds if serving else DEFAULT_READINESS_SECONDS
    )
    probe_seconds = serving.probe_timeout_seconds if serving else DEFAULT_PROBE_SECONDS

    def check(count: int, deployment: str | None = None) -> tuple[int, str | None]:
        return _probe(workspace, endpoint, probe, count, deployment, timeout=probe_seconds)

    def event(message: str) -> None:
        report.events.append(message)
        log(message)

    original = workspace.endpoints.get_traffic(endpoint)
    new = plan.new_deployment
    if new is None:
        event(f"rollout: nothing to do ({plan.reason})")
        _promote(workspace, endpoint, model, plan, event)
        report.final_traffic = dict(workspace.endpoints.get_traffic(endpoint).traffic)
        return report

    stage = "create"
    try:
        existing = workspace.endpoints.get_deployment(endpoint, new)
        if (
            existing is not None
            and existing.model == plan.model
            and existing.provisioning_state == "Succeeded"
            and existing.ready
        ):
            # An earlier run got this far before it was killed (or this is a resume).
            share = f"at {plan.resumed_from}%" if plan.resumed_from else "at 0%"
            event(f"rollout: {new!r} already serves {plan.model} {share} and is ready")
        else:
            event(f"rollout: creating deployment {new!r} with {plan.model} at 0%")
            workspace.endpoints.create_or_update_deployment(
                DeploymentSpec(endpoint, new, model, serving=serving)
            )
        workspace.registry.set_model_alias(model.name, CHALLENGER, model.version)
        stage = "readiness"
        _wait_ready(workspace, endpoint, new, readiness_seconds)
        stage = "direct test"
        failures, why = check(1, new)
        if failures:
            raise WorkspaceError(f"direct request to {new!r} failed: {why}")
        event(f"rollout: {new!r} is ready and answers directly")
        if smoke_test is not None:
            stage = "smoke test (direct)"
            result = smoke_test(new)
            report.smoke[f"deployment {new}"] = result
            event(f"rollout: smoke test of {new!r} directly: {_summary(result)}")

        if plan.mirror_percent:
            stage = "mirror"
            mirrored = TrafficState(dict(original.traffic), {new: plan.mirror_percent})
            workspace.endpoints.set_traffic(endpoint, mirrored)
            failures, why = check(settings.mirror_requests)
            # Mirrored answers are discarded: ask the new deployment itself how it is doing.
            new_failures, new_why = check(1, new)
            if failures or new_failures:
                raise WorkspaceError(f"mirror phase: {why or new_why}")
            event(
                f"rollout: mirrored {plan.mirror_percent}% of {settings.mirror_requests} requests"
            )

        for step in plan.traffic_steps:
            stage = f"traffic {dict(step)}"
            applied = workspace.endpoints.set_traffic(endpoint, TrafficState(dict(step), {}))
            if applied.live != {k: v for k, v in step.items() if v > 0}:
                raise WorkspaceError(f"traffic read back as {dict(applied.traffic)}")
            failures, why = check(settings.requests_per_step)
            new_failures, new_why = check(1, new)
            rate = (failures + new_failures) / (settings.requests_per_step + 1)
            if rate > settings.max_error_rate:
                raise WorkspaceError(f"error rate {rate:.0%} at {dict(step)}: {why or new_why}")
            event(f"rollout: traffic {dict(step)}, {failures + new_failures} probe errors")
        if smoke_test is not None:
            stage = "smoke test (endpoint)"
            result = smoke_test(None)
            report.smoke["endpoint"] = result
            event(f"rollout: smoke test through the endpoint: {_summary(result)}")
    except Exception as exc:
        # A resumed rollout's deployment was serving before this run: it stays.
        keep = plan.resumed_from > 0
        _undo(workspace, endpoint, model, new, original, event, keep_new=keep)
        _record_failure(workspace, model, stage, exc)
        raise RolloutFailed(
            f"rollout of {plan.model} failed at {stage}: {exc}; traffic restored to "
            f"{dict(original.traffic)}, deployment {new!r} "
            + ("kept (it had live traffic before this run)" if keep else "removed")
        ) from exc

    _promote(workspace, endpoint, model, plan, event)
    report.final_traffic = dict(workspace.endpoints.get_traffic(endpoint).traffic)
    report.seconds = time.monotonic() - started
    event(f"rollout: done in {report.seconds:.1f} s, traffic {dict(report.final_traffic)}")
    return report


ROLLOUT_TAG = "rollout"  # on a version whose rollout failed: "failed at <stage>"
ROLLOUT_REASON_TAG = "rollout_reason"


def _record_failure(workspace: Workspace, model: ModelVersion, stage: str, exc: Exception) -> None:
    """Tag the version with how its rollout ended, so `finetune-phi models` shows that the
    gate passed it but the rollout rolled it back. Best effort: the rollback already happened,
    and a registry hiccup must not hide the reason."""
    tags = {ROLLOUT_TAG: f"failed at {stage}", ROLLOUT_REASON_TAG: str(exc)[:500]}
    with contextlib.suppress(WorkspaceError):
        workspace.registry.set_model_tags(model.name, model.version, tags)


def _promote(
    workspace: Workspace,
    endpoint: str,
    model: ModelVersion,
    plan: RolloutPlan,
    event: Callable[[str], None],
) -> None:
    """The model serves all traffic: make it the champion, clear the challenger alias, retire
    the deployments the plan names. Each step is skipped when already done, so a run killed
    halfway through this is finished by the next one."""
    previous_champion = workspace.registry.get_model_by_alias(model.name, CHAMPION)
    if previous_champion is None or previous_champion.version != model.version:
        workspace.registry.set_model_alias(model.name, CHAMPION, model.version)
        if previous_champion is not None:
            event(f"rollout: champion {previous_champion.version} -> {model.version}")
    if workspace.registry.get_model_by_alias(model.name, CHALLENGER) is not None:
        workspace.registry.delete_model_alias(model.name, CHALLENGER)
    for name in plan.retire:
        workspace.endpoints.delete_deployment(endpoint, name)
        event(f"rollout: retired {name!r}")


def _undo(
    workspace: Workspace,
    endpoint: str,
    model: ModelVersion,
    new: str,
    original: TrafficState,
    event: Callable[[str], None],
    *,
    keep_new: bool = False,
) -> None:
    """Put traffic and mirror back exactly, then remove the new deployment (unless
    `keep_new`); best effort on each part so one failure does not stop the others."""
    try:
        workspace.endpoints.set_traffic(endpoint, original)
        event(f"rollback: traffic restored to {dict(original.traffic)}")
    except Exception as exc:  # keep undoing: the deployment must still go
        event(f"rollback: could not restore traffic: {exc}")
    try:
        if keep_new:
            event(f"rollback: kept {new!r} (it had live traffic before this run)")
        elif workspace.endpoints.get_deployment(endpoint, new) is not None:
            workspace.endpoints.delete_deployment(endpoint, new)
            event(f"rollback: removed deployment {new!r}")
    except Exception as exc:
        event(f"rollback: could not remove {new!r}: {exc}")
    try:
        workspace.registry.delete_model_alias(model.name, CHALLENGER)
    except Exception as exc:
        event(f"rollback: could not clear the {CHALLENGER} alias: {exc}")


# --------------------------------------------------------------------------- rollback


class NothingToRollBack(WorkspaceError):
    """The endpoint has no other deployment to put the traffic back on."""


def rollback_target(
    traffic: TrafficState,
    deployments: Mapping[str, DeploymentInfo],
    champion_model: str | None,
    requested: str | None = None,
) -> str:
    """Pure: the deployment that gets all live traffic back.

    One live deployment: the other one (blue <-> green). Traffic split (a rollout stopped
    halfway): the live deployment serving the champion (the alias moves only once a rollout
    has succeeded). `requested` (`--deployment`) overrides both.
    """
    names = sorted(deployments)
    live = traffic.live
    if requested is not None:
        if requested not in deployments:
            raise NothingToRollBack(
                f"endpoint has no deployment {requested!r} (deployments: {', '.join(names)})"
            )
        return requested
    if not live:
        raise NothingToRollBack(
            "nothing to roll back: no deployment has live traffic "
            "(route some with `finetune-phi endpoint traffic NAME=100`)"
        )
    if len(live) == 1:
        (current,) = live
        others = [name for name in names if name != current]
        if not others:
            serving = deployments[current].model if current in deployments else "?"
            raise NothingToRollBack(
                f"nothing to roll back to: {current!r} (serving {serving}) is the only "
                "deployment; the previous colour was retired after the rollout (keep it next "
                "time with --set rollout.keep_previous=true)"
            )
        pair = other_colour(current)
        if pair in others:
            return pair
        if len(others) == 1:
            return others[0]
        raise NothingToRollBack(
            f"several deployments besides {current!r} ({', '.join(others)}): choose one with "
            "--deployment NAME"
        )
    on_champion = [
        name
        for name in live
        if deployments.get(name) is not None and deployments[name].model == champion_model
    ]
    if len(on_champion) == 1:
        return on_champion[0]
    shares = ", ".join(f"{n}={p}" for n, p in sorted(live.items()))
    raise NothingToRollBack(
        f"traffic is split ({shares}) and no single live deployment serves the champion: "
        "choose one with --deployment NAME"
    )


# --------------------------------------------------------------------------- serving


PARAMETERS_TAG = "model_parameters"  # on a registered version: its size, as the trainer counted


def parameters_of(
    model: ModelVersion, registry: ModelRegistry, profile: Profile, scratch: Path
) -> int:
    """The model's size: the profile's `serving.model_parameters`, else the version's tag,
    else counted from its config.json when the registry keeps the files on this machine.
    Never downloads a model (the process that plans may have neither the room nor the time)."""
    if profile.serving.model_parameters:
        return profile.serving.model_parameters
    tagged = model.tags.get(PARAMETERS_TAG, "")
    if tagged.isdigit():
        return int(tagged)
    if model.source.startswith(("file:", "/")):
        folder = registry.download_model(model.name, model.version, scratch)  # local: no copy
        for config_file in sorted(Path(folder).rglob("config.json")):
            config = json.loads(config_file.read_text())
            if config.get("model_type") == "phi3":
                return phi3_parameters(config)
    raise ServingPlanError(
        f"the size of {model.name}:{model.version} is not known (no {PARAMETERS_TAG} tag, no "
        "local config.json): set serving.model_parameters, e.g. 3821079552 for Phi-3.5-mini"
    )
