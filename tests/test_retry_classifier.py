"""`is_transient` on the exceptions the stack really raises: the backends' own, the hub's
(huggingface_hub on httpx2), httpx's and requests'. A task retries exactly these."""

from __future__ import annotations

import httpx
import pytest
import requests

from finetune_phi.workspace import NotFound, RuleViolation, WorkspaceError, is_transient


def _httpx_status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://example.invalid/model")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def _hub_error(status: int) -> BaseException:
    from huggingface_hub.errors import HfHubHTTPError

    client = pytest.importorskip("httpx2")  # what huggingface_hub 2 builds its errors on
    request = client.Request("GET", "https://example.invalid/api/models/x")
    return HfHubHTTPError(
        f"{status} from the hub", response=client.Response(status, request=request)
    )


def _requests_http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status}", response=response)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (WorkspaceError("throttled", transient=True), True),
        (WorkspaceError("bad request"), False),
        (NotFound("no such model"), False),
        (RuleViolation("traffic must sum to 100"), False),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("slow"), True),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("read timed out"), True),
        (_httpx_status_error(503), True),
        (_httpx_status_error(429), True),
        (_httpx_status_error(404), False),
        (_httpx_status_error(401), False),
        (requests.ConnectionError("refused"), True),
        (requests.Timeout("slow"), True),
        (_requests_http_error(502), True),
        (_requests_http_error(403), False),
        (ValueError("a bug"), False),
        (RuntimeError("a failed job"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classification(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (504, True)])
def test_hub_errors_that_may_pass(status: int, transient: bool) -> None:
    assert is_transient(_hub_error(status)) is transient


@pytest.mark.parametrize("status", [401, 403, 404])
def test_hub_errors_that_will_not(status: int) -> None:
    assert not is_transient(_hub_error(status))


def test_hub_transport_errors_are_transient() -> None:
    client = pytest.importorskip("httpx2")
    assert is_transient(client.ConnectError("hub unreachable"))
    assert is_transient(client.ReadTimeout("hub too slow"))


def test_a_model_missing_from_the_local_cache_is_permanent() -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert not is_transient(LocalEntryNotFoundError("not in the cache and offline"))
