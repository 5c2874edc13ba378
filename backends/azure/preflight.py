"""Preflight: everything that can be checked before the pipeline spends money on Azure.

Each check reads, never writes, and reports one actionable line. Order matters: without a
credential nothing else can be asked, without the workspace neither SKUs nor quota; a check
that cannot run because an earlier one failed is not reported (its line would be noise). A
check that cannot tell says so as a warning, which does not fail the preflight.

    settings    subscription / resource group / workspace are set
    credential  DefaultAzureCredential (or the given one) yields a management token
    workspace   the workspace exists and is readable; it is in the profile's region
    sku         the training SKU is an AmlCompute size of the region; the inference SKU is on
                the managed online endpoints SKU list (quota.py)
    quota       enough free vCPUs of each family for what the run holds at once: the cluster at
                max nodes, and the two deployments of a blue-green rollout at
                ceil(1.2 x instances) x cores each (quota.py has the rule and its source)
    endpoint    the endpoint name follows Azure's rules; an endpoint of that name in this
                workspace uses key auth; otherwise the name is free in the region (names are
                unique per region across all Azure customers)
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.azure import quota
from backends.azure.errors import classify
from backends.azure.workspace import AzureWorkspace
from finetune_phi.workspace import NotFound, WorkspaceError

ENDPOINT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
# Every managed online endpoint is served at https://<name>.<region>.inference.ml.azure.com
# (its scoring URI). Endpoint names are unique per region across all customers ("Endpoint
# names must be unique within an Azure region", Safe rollout for online endpoints:
# https://learn.microsoft.com/azure/machine-learning/how-to-safely-rollout-online-endpoints);
# the service refuses a taken one only when the endpoint is created ("There is already an
# endpoint with this name, Endpoint name needs to be unique within a region"). The resource
# provider has no name-availability call for endpoints (its REST API and azure-ai-ml have
# none), so the check asks DNS, as the troubleshooting guide does (`nslookup
# <endpoint-name>.<endpoint-region>.inference.ml.azure.com`:
# https://learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-online-endpoints).
INFERENCE_HOST = "{name}.{region}.inference.ml.azure.com"
DNS_TIMEOUT_SECONDS = 5.0

# host -> True: it has DNS records; False: the name does not exist; None: could not tell
Resolver = Callable[[str], "bool | None"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    warning: bool = False  # ok, but the check could not tell: said, not failed

    def line(self) -> str:
        mark = "FAIL" if not self.ok else "warn" if self.warning else "ok  "
        return f"{mark} {self.name:<10} {self.message}"


def _problem(exc: Exception, what: str) -> str:
    error = exc if isinstance(exc, WorkspaceError) else classify(exc, what)
    return str(error).splitlines()[0]


def inference_host(name: str, region: str) -> str:
    return INFERENCE_HOST.format(name=name.lower(), region=region.replace(" ", "").lower())


def dns_resolves(host: str, timeout: float = DNS_TIMEOUT_SECONDS) -> bool | None:
    """Whether `host` has DNS records: True, False (the name does not exist), or None when
    the lookup failed otherwise (no network, no answer within `timeout`): cannot tell. The
    lookup runs on a daemon thread, so a resolver that hangs holds up nothing."""
    missing = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    answer: list[bool | None] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except socket.gaierror as exc:
            answer.append(False if exc.errno in missing else None)
        except OSError:
            answer.append(None)

    thread = threading.Thread(target=look_up, name=f"dns {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else None


def run_preflight(
    workspace: AzureWorkspace, endpoint_name: str, *, resolve: Resolver = dns_resolves
) -> list[Check]:
    """Run the checks in order; stop at the first one the next ones depend on. `resolve`
    answers whether a host name has DNS records (the endpoint name check)."""
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

    checks += _sku_and_quota(ml, workspace, endpoint_name)
    checks.append(_endpoint_check(workspace, endpoint_name, resolve))
    return checks


def _sku_and_quota(ml: Any, workspace: AzureWorkspace, endpoint_name: str) -> list[Check]:
    s = workspace.settings
    try:
        sizes = {size.name.lower(): size for size in ml.compute.list_sizes(location=s.region)}
        usages = list(ml.compute.list_usage(location=s.region))
    except Exception as exc:
        return [Check("sku", False, _problem(exc, f"VM sizes / usage in {s.region}"))]
    checks: list[Check] = []
    needs: list[quota.QuotaNeed] = []

    # The cluster: an AmlCompute size of the region (its vCPUs and family from the service).
    size = sizes.get(s.training_sku.lower())
    if size is None:
        series = s.training_sku.lower().split("_")[1:2]
        similar = sorted(v.name for k, v in sizes.items() if k.split("_")[1:2] == series)
        checks.append(
            Check(
                "sku",
                False,
                f"training SKU {s.training_sku} is not offered for compute clusters in "
                f"{s.region}"
                + (f" (offered there: {', '.join(similar[:5])})" if similar else "")
                + ": set backend.training_sku or backend.region",
            )
        )
    else:
        checks.append(Check("sku", True, f"training SKU {s.training_sku} is offered in {s.region}"))
        # Same REST-dict copy as Usage: `vCPUs` when `v_cp_us` is empty.
        cores = int(getattr(size, "v_cp_us", None) or getattr(size, "vCPUs", 0) or 0)
        needs.append(quota.training_need(s, str(size.family or ""), cores))

    # The deployments: a size of the managed online endpoints SKU list (not the AmlCompute
    # sizes: the two lists differ), whose family and cores the list gives.
    sku = quota.managed_sku(s.inference_sku)
    if sku is None:
        similar = quota.similar_managed_skus(s.inference_sku)
        checks.append(
            Check(
                "sku",
                False,
                f"inference SKU {s.inference_sku} is not on the managed online endpoints SKU "
                "list"
                + (f" (for example {', '.join(similar)})" if similar else "")
                + f": set backend.inference_sku ({quota.SKU_LIST_URL})",
            )
        )
    else:
        checks.append(
            Check(
                "sku",
                True,
                f"inference SKU {s.inference_sku} is on the managed online endpoints SKU list",
            )
        )
        existing = _existing_deployments(ml, endpoint_name)
        needs.append(quota.inference_need(s, sku, existing=existing))

    for family, parts in quota.by_family(needs).items():
        checks.append(_quota_check(parts, _usage_of(usages, family), s.region))
    return checks


def _usage_of(usages: list[Any], family: str) -> Any:
    return next((u for u in usages if quota.family_key(_usage_name(u)) == family), None)


def _quota_check(parts: list[quota.QuotaNeed], usage: Any, region: str) -> Check:
    """One family: what the run holds of it at once against what is free in the region."""
    need = sum(part.vcpus for part in parts)
    what = quota.describe(parts)
    family = parts[0].family
    if usage is None:
        return Check("quota", False, f"no quota listed for family {family} in {region}; {what}")
    # The SDK's Usage copies the REST dict as is: `currentValue` beside an empty
    # `current_value`; read whichever is set.
    used = getattr(usage, "current_value", None)
    if used is None:
        used = getattr(usage, "currentValue", 0)
    free = int(usage.limit or 0) - int(used or 0)
    if free < need:
        return Check(
            "quota",
            False,
            f"needs {what}; {free} free (limit {usage.limit}) in {region}: request a quota "
            "increase (docs/azure.md) or lower the node/instance count",
        )
    return Check("quota", True, f"{need} of {free} free vCPUs of {family}: {what}")


def _existing_deployments(ml: Any, endpoint_name: str) -> int:
    """How many deployments the endpoint of that name in this workspace has (their quota is
    already in the usage); 0 when there is none, or it cannot be read (counted as none:
    the larger need)."""
    if not ENDPOINT_NAME.fullmatch(endpoint_name):
        return 0
    try:
        return len(list(ml.online_deployments.list(endpoint_name)))
    except Exception:
        return 0


def _usage_name(usage: Any) -> str:
    """The family a usage counts (the SDK keeps the REST `name` as a dict {"value": ...})."""
    name = getattr(usage, "name", None)
    if isinstance(name, dict):
        return str(name.get("value") or "")
    return str(getattr(name, "value", name) or "")


def _endpoint_check(workspace: AzureWorkspace, name: str, resolve: Resolver) -> Check:
    s = workspace.settings
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
            return _name_free_check(workspace, name, resolve)
        return Check("endpoint", False, str(error).splitlines()[0])
    if str(getattr(endpoint.auth_mode, "value", endpoint.auth_mode)).lower() != "key":
        return Check(
            "endpoint",
            False,
            f"endpoint {name} exists with auth mode {endpoint.auth_mode}; the pipeline needs "
            "key auth: choose another endpoint.name",
        )
    return Check(
        "endpoint",
        True,
        f"{name} exists in workspace {s.workspace} (key auth); the rollout reuses it",
    )


def _name_free_check(workspace: AzureWorkspace, name: str, resolve: Resolver) -> Check:
    """No endpoint `name` in this workspace: is the name free in the region? Its scoring
    host resolves when any endpoint of that name exists there, whoever's it is. A made-up
    name is asked too: a resolver that answers for every name (some networks do) tells
    nothing."""
    s = workspace.settings
    host = inference_host(name, s.region)
    rule = "endpoint names are unique per Azure region across all customers"
    found = resolve(host)
    if found is False:
        return Check(
            "endpoint",
            True,
            f"{name} is free in {s.region} ({host} does not resolve); the pipeline creates it",
        )
    control = resolve(inference_host(f"finetune-phi-probe-{uuid.uuid4().hex[:12]}", s.region))
    if found is None or control is not False:
        why = "DNS lookup failed" if found is None else "DNS answers for any name here"
        return Check(
            "endpoint",
            True,
            f"could not tell whether {name} is free in {s.region} ({why}); {rule}: if creating "
            f"it fails, set endpoint.name to a distinctive name such as "
            f"{distinctive_name(name, workspace)}",
            warning=True,
        )
    return Check(
        "endpoint",
        False,
        f"endpoint name {name} is taken in {s.region}: {host} resolves, but workspace "
        f"{s.workspace} has no endpoint of that name ({rule}); set endpoint.name (or "
        f"FINETUNE_PHI__ENDPOINT__NAME) to a distinctive name such as "
        f"{distinctive_name(name, workspace)}",
    )


def distinctive_name(name: str, workspace: AzureWorkspace) -> str:
    """`name` with a suffix derived from the subscription, resource group and workspace: the
    same for every run against this workspace, unlikely to be anyone else's."""
    s = workspace.settings
    scope = f"{s.subscription_id}/{s.resource_group}/{s.workspace}".lower()
    suffix = hashlib.sha256(scope.encode()).hexdigest()[:6]
    return f"{name[: 32 - len(suffix) - 1].rstrip('-')}-{suffix}"


def preflight_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(check.ok for check in checks)
