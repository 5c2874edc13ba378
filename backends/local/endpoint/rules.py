"""Azure ML's online-endpoint rules, as pure functions.

The local endpoint refuses exactly what an Azure managed online endpoint refuses, so a rollout
plan that works locally does not meet a surprise in Azure (and the other way round). Nothing
here touches files, processes or the network: the control plane validates with these before it
writes state, and the front uses the two pickers on every request.

Rules (Azure's documentation on endpoint traffic and mirroring):
- names in `traffic` and `mirror_traffic` must be deployments of the endpoint;
- percents are whole numbers from 0 to 100;
- live traffic sums to exactly 100, or is 0 everywhere (no deployment receives requests);
- mirror traffic goes to at most one deployment, at most 50 %, and only to a deployment that
  receives no live traffic;
- a deployment that receives live traffic cannot be deleted (its mirror share goes with it).
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Mapping

from finetune_phi.workspace import RuleViolation, TrafficState

MAX_MIRROR_PERCENT = 50

# Azure: 3 to 32 characters, starting with a letter, letters, digits and '-', not ending in '-'.
# Locally the names are also folder names, so this keeps '/', '..' and friends out of paths.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")


def validate_name(kind: str, name: str) -> None:
    """Refuse an endpoint or deployment name Azure would refuse (`kind` is for the message)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RuleViolation(
            f"invalid {kind} name {name!r}: use 3 to 32 characters, letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )


def _check_percents(label: str, shares: Mapping[str, int], deployments: Collection[str]) -> None:
    for name, pct in shares.items():
        if name not in deployments:
            known = ", ".join(sorted(deployments)) or "none"
            raise RuleViolation(
                f"{label} names {name!r}, which is not a deployment of this endpoint "
                f"(deployments: {known})"
            )
        # bool is an int subclass; True as "1 %" is a bug in the caller, not a percent.
        if isinstance(pct, bool) or not isinstance(pct, int):
            raise RuleViolation(f"{label} of {name!r} must be a whole percent, got {pct!r}")
        if not 0 <= pct <= 100:
            raise RuleViolation(f"{label} of {name!r} must be between 0 and 100, got {pct}")


def validate_traffic(state: TrafficState, deployments: Collection[str]) -> None:
    """Raise `RuleViolation` (with a message saying which rule) unless Azure would accept
    `state` for an endpoint whose deployments are `deployments`."""
    _check_percents("traffic", state.traffic, deployments)
    _check_percents("mirror traffic", state.mirror_traffic, deployments)
    total = sum(state.traffic.values())
    if total not in (0, 100):
        shares = ", ".join(f"{n}={p}" for n, p in sorted(state.traffic.items()))
        raise RuleViolation(
            f"live traffic must sum to 100 (or be 0 for every deployment); got {total} ({shares})"
        )
    mirrored = {name: pct for name, pct in state.mirror_traffic.items() if pct > 0}
    if len(mirrored) > 1:
        raise RuleViolation(
            f"mirror traffic can go to one deployment only; got {', '.join(sorted(mirrored))}"
        )
    for name, pct in mirrored.items():
        if pct > MAX_MIRROR_PERCENT:
            raise RuleViolation(
                f"mirror traffic of {name!r} is {pct}%; at most {MAX_MIRROR_PERCENT}% of "
                "requests can be mirrored"
            )
        live = state.traffic.get(name, 0)
        if live > 0:
            raise RuleViolation(
                f"cannot mirror traffic to {name!r}: it receives {live}% of live traffic; "
                "only a deployment with 0% live traffic can be a mirror"
            )


def check_can_delete(state: TrafficState, name: str) -> TrafficState:
    """Refuse to delete a deployment with live traffic; otherwise the traffic state without it
    (Azure drops the deployment from both maps, its mirror share included)."""
    live = state.traffic.get(name, 0)
    if live > 0:
        raise RuleViolation(
            f"cannot delete deployment {name!r}: it receives {live}% of live traffic; "
            "move its traffic to other deployments first"
        )
    return TrafficState(
        traffic={n: p for n, p in state.traffic.items() if n != name},
        mirror_traffic={n: p for n, p in state.mirror_traffic.items() if n != name},
    )


def pick_deployment(traffic: Mapping[str, int], rng: random.Random) -> str | None:
    """The deployment that serves one live request: a weighted draw over the traffic map.
    None when no deployment has traffic. Names are sorted so a seeded `rng` is reproducible."""
    live = sorted((name, pct) for name, pct in traffic.items() if pct > 0)
    total = sum(pct for _, pct in live)
    if total <= 0:
        return None
    ticket = rng.randrange(total)
    for name, pct in live:
        if ticket < pct:
            return name
        ticket -= pct
    return live[-1][0]  # unreachable: the tickets cover [0, total)


def should_mirror(mirror: Mapping[str, int], rng: random.Random) -> str | None:
    """The deployment that also gets a copy of this request, or None: the (single) mirror
    deployment with probability percent/100."""
    for name, pct in sorted(mirror.items()):
        if pct > 0:
            return name if rng.random() * 100 < pct else None
    return None
