"""Preflight: everything that can be checked before the pipeline spends money on Azure.

Each check reads, never writes, and reports one actionable line. Order matters: without a
credential nothing else can be asked, without the workspace neither SKUs nor quota; a check
that cannot run because an earlier one failed is not reported (its line would be noise).

    settings    subscription / resource group / workspace are set
    credential  DefaultAzureCredential (or the given one) yields a management token
    workspace   the workspace exists and is readable; it is in the profile's region
    sku         training and inference VM sizes are offered in the region
    quota       enough free vCPUs of each SKU's family for max nodes / instance count
    endpoint    the endpoint name follows Azure's rules; an existing endpoint uses key auth
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from backends.azure.errors import classify
from backends.azure.workspace import AzureWorkspace
from finetune_phi.workspace import NotFound, WorkspaceError

ENDPOINT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")
MANAGEMENT_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<10} {self.message}"


def _problem(exc: Exception, what: str) -> str:
    error = exc if isinstance(exc, WorkspaceError) else classify(exc, what)
    return str(error).splitlines()[0]


def run_preflight(workspace: AzureWorkspace, endpoint_name: str) -> list[Check]:
    """Run the checks in order; stop at the first one the next ones depend on."""
    s = workspace.settings
    checks: list[Check] = []
    missing = [
        f"FINETUNE_PHI__BACKEND__{key.upper()}"
        for key in ("subscription_id", "resource_group", "workspace")
        if not getattr(s, key)
    ]
    if missing:
        checks.append(Check("settings", False, "set " + ", ".join(missing) + " (docs/azure.md)"))
        return checks
    checks.append(
        Check("settings", True, f"{s.subscription_id} / {s.resource_group} / {s.workspace}")
    )

    try:
        workspace.connection.credential.get_token(MANAGEMENT_SCOPE)
    except Exception as exc:
        checks.append(
            Check(
                "credential",
                False,
                f"no Azure credential ({type(exc).__name__}): run `az login`, or set up a "
                "managed identity or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET",
            )
        )
        return checks
    checks.append(Check("credential", True, "a management token was issued"))

    ml = workspace.connection.ml_client
    try:
        found = ml.workspaces.get(s.workspace)
    except Exception as exc:
        problem = _problem(exc, f"workspace {s.workspace}")
        if isinstance(classify(exc, "workspace"), NotFound):
            problem = (
                f"workspace {s.workspace} not found in resource group {s.resource_group} of "
                f"subscription {s.subscription_id}: check the names or create it (docs/azure.md)"
            )
        checks.append(Check("workspace", False, problem))
        return checks
    location = str(getattr(found, "location", "") or "")
    if location and location.replace(" ", "").lower() != s.region.lower():
        checks.append(
            Check(
                "workspace",
                False,
                f"workspace {s.workspace} is in {location}, the profile says region "
                f"{s.region}: set backend.region: {location}",
            )
        )
        return checks
    checks.append(Check("workspace", True, f"{s.workspace} in {location or s.region}"))

    checks += _sku_and_quota(ml, workspace)
    checks.append(_endpoint_check(workspace, endpoint_name))
    return checks


def _sku_and_quota(ml: Any, workspace: AzureWorkspace) -> list[Check]:
    s = workspace.settings
    try:
        sizes = {size.name: size for size in ml.compute.list_sizes(location=s.region)}
        usages = list(ml.compute.list_usage(location=s.region))
    except Exception as exc:
        return [Check("sku", False, _problem(exc, f"VM sizes / usage in {s.region}"))]
    checks: list[Check] = []
    needs = (
        ("training", s.training_sku, s.training_max_nodes),
        ("inference", s.inference_sku, s.inference_instance_count),
    )
    for role, sku, count in needs:
        size = sizes.get(sku)
        if size is None:
            similar = sorted(name for name in sizes if name.split("_")[1:2] == sku.split("_")[1:2])
            checks.append(
                Check(
                    "sku",
                    False,
                    f"{role} SKU {sku} is not offered in {s.region}"
                    + (f" (offered there: {', '.join(similar[:5])})" if similar else "")
                    + f": set backend.{role}_sku or backend.region",
                )
            )
            continue
        checks.append(Check("sku", True, f"{role} SKU {sku} is offered in {s.region}"))
        family = str(size.family or "")
        # Same REST-dict copy as Usage: `vCPUs` when `v_cp_us` is empty.
        vcpus = int(getattr(size, "v_cp_us", None) or getattr(size, "vCPUs", 0) or 0) * count
        usage = next((u for u in usages if _usage_name(u).lower() == family.lower()), None)
        if usage is None:
            checks.append(
                Check("quota", False, f"no quota listed for family {family} in {s.region}")
            )
            continue
        # The SDK's Usage copies the REST dict as is: `currentValue` beside an empty
        # `current_value`; read whichever is set.
        used = getattr(usage, "current_value", None)
        if used is None:
            used = getattr(usage, "currentValue", 0)
        free = int(usage.limit or 0) - int(used or 0)
        if free < vcpus:
            checks.append(
                Check(
                    "quota",
                    False,
                    f"{role}: {sku} x{count} needs {vcpus} vCPUs of {family}, {free} free "
                    f"(limit {usage.limit}) in {s.region}: request a quota increase "
                    "(docs/azure.md) or lower the node/instance count",
                )
            )
        else:
            checks.append(Check("quota", True, f"{role}: {vcpus} of {free} free vCPUs of {family}"))
    return checks


def _usage_name(usage: Any) -> str:
    """The family a usage counts (the SDK keeps the REST `name` as a dict {"value": ...})."""
    name = getattr(usage, "name", None)
    if isinstance(name, dict):
        return str(name.get("value") or "")
    return str(getattr(name, "value", name) or "")


def _endpoint_check(workspace: AzureWorkspace, name: str) -> Check:
    if not ENDPOINT_NAME.fullmatch(name):
        return Check(
            "endpoint",
            False,
            f"endpoint name {name!r} is invalid: 3-32 characters, letters, digits and '-', "
            "starting with a letter, not ending with '-' (set endpoint.name)",
        )
    try:
        endpoint = workspace.connection.ml_client.online_endpoints.get(name)
    except Exception as exc:
        error = classify(exc, f"endpoint {name}")
        if isinstance(error, NotFound):
            return Check("endpoint", True, f"{name} does not exist yet; the pipeline creates it")
        return Check("endpoint", False, str(error).splitlines()[0])
    if str(getattr(endpoint.auth_mode, "value", endpoint.auth_mode)).lower() != "key":
        return Check(
            "endpoint",
            False,
            f"endpoint {name} exists with auth mode {endpoint.auth_mode}; the pipeline needs "
            "key auth: choose another endpoint.name",
        )
    return Check("endpoint", True, f"{name} exists (key auth); the rollout reuses it")


def preflight_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(check.ok for check in checks)
