"""One classification of Azure failures into `WorkspaceError` / `NotFound` / `RuleViolation`.

Every call the Azure backend makes goes through `azure_call`, so the decision "is retrying this
worth it?" is made here and nowhere else; the tasks' retry conditions read it back through
`finetune_phi.workspace.is_transient`.

Transient (a later identical call may succeed):
- HTTP 408, 429 (throttling; the service's `Retry-After` is kept on the error), 5xx;
- azure-core's `ServiceRequestError` / `ServiceResponseError` (connection refused or reset,
  DNS, read timeouts) and their timeout subclasses; `requests`' connection errors and timeouts.

Permanent (retrying only wastes time or money):
- 401 / credential problems (`ClientAuthenticationError`, `CredentialUnavailableError`);
- 403 (authorization: a missing role assignment);
- 400 with a quota code (`QuotaExceeded`, `...Quota...`): a quota request, not a retry, fixes it;
- other 400s (validation) and the SDK's own `ValidationException`;
- 404 (`NotFound`), 409 (conflict: the caller decides what it means), including the SDK's
  `AssetPathException` (the service's 409 for an asset version re-registered with another
  path, raised without its status).

Azure's own HTTP pipeline already retries 408/429/5xx and connection errors a few times with
backoff (honouring `Retry-After`) before anything reaches this module: what arrives here as
transient has outlasted those retries, and the task-level retry waits longer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import requests
from azure.ai.ml.exceptions import AssetPathException
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from finetune_phi.workspace import NotFound, RuleViolation, WorkspaceError

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_QUOTA = re.compile(r"quota", re.IGNORECASE)


class AzureWorkspaceError(WorkspaceError):
    """A WorkspaceError that keeps what Azure said: HTTP status, error code, Retry-After."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, transient=transient)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class AzureNotFound(NotFound, AzureWorkspaceError):
    """404 from Azure."""


class AzureRuleViolation(RuleViolation, AzureWorkspaceError):
    """The service refused a request by its rules (traffic, mirroring, deleting a live
    deployment). Never transient."""


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None:
            with contextlib.suppress(ValueError):
                return float(value) / 1000.0
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is not None:
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code:
        return str(code)
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else None


def _short(exc: BaseException) -> str:
    """The service's message without azure-core's multi-line decoration."""
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:1000]


def classify(exc: BaseException, what: str, *, rules: bool = False) -> WorkspaceError:
    """The WorkspaceError for `exc`, raised while doing `what` (a short phrase for the message).

    With `rules`, a 400 means the service refused the request by its rules (traffic and
    deployment operations): it becomes a RuleViolation rather than a plain validation error.
    """
    if isinstance(exc, WorkspaceError):
        return exc
    if isinstance(exc, AssetPathException):
        # The service's 409 for a version that exists with another path, which the SDK
        # re-raises without its status: the caller decides what the conflict means.
        return AzureWorkspaceError(
            f"{what}: conflict [409 AssetPathConflict]: {_short(exc)}",
            status=409,
            code="AssetPathConflict",
        )
    status = _status(exc)
    code = _error_code(exc)
    detail = _short(exc)
    tag = f" [{status}{' ' + code if code else ''}]" if status else ""
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        return AzureWorkspaceError(
            f"{what}: not authenticated{tag}: {detail}. Sign in (`az login`), or set a managed "
            "identity / AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET",
            status=status,
            code=code,
        )
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return AzureNotFound(f"{what}: not found{tag}: {detail}", status=status, code=code)
    if status == 403:
        return AzureWorkspaceError(
            f"{what}: not authorized{tag}: {detail}. The identity needs a role on the "
            "workspace (e.g. AzureML Data Scientist; see docs/azure.md)",
            status=status,
            code=code,
        )
    if status is not None and (status in TRANSIENT_STATUS or status >= 500):
        retry_after = _retry_after(exc)
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return AzureWorkspaceError(
            f"{what}: Azure answered{tag}: {detail}{hint}",
            transient=True,
            status=status,
            code=code,
            retry_after=retry_after,
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return AzureWorkspaceError(
            f"{what}: connection problem ({type(exc).__name__}): {detail}", transient=True
        )
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return AzureWorkspaceError(
            f"{what}: connection problem ({type(exc).__name__}): {detail}", transient=True
        )
    if isinstance(exc, HttpResponseError) or status is not None:
        if _QUOTA.search(code or "") or _QUOTA.search(detail):
            return AzureWorkspaceError(
                f"{what}: quota exceeded{tag}: {detail}. Request more quota for this VM family "
                "in the region (see docs/azure.md), or choose a smaller SKU",
                status=status,
                code=code,
            )
        if rules and status == 400:
            return AzureRuleViolation(f"{what}: refused{tag}: {detail}", status=status, code=code)
        return AzureWorkspaceError(
            f"{what}: Azure refused{tag}: {detail}", status=status, code=code
        )
    # The SDK's client-side validation (ValidationException...) and anything unexpected.
    return AzureWorkspaceError(f"{what}: {type(exc).__name__}: {detail}")


@contextlib.contextmanager
def azure_call(what: str, *, rules: bool = False) -> Iterator[None]:
    """Run the block; any failure leaves as the one classified WorkspaceError."""
    try:
        yield
    except WorkspaceError:
        raise
    except Exception as exc:
        raise classify(exc, what, rules=rules) from exc


def status_of(exc: Any) -> int | None:
    """The HTTP status a (classified or raw) error carries, if any."""
    if isinstance(exc, AzureWorkspaceError):
        return exc.status
    return _status(exc)
