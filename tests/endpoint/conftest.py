"""Fixtures for the local endpoint: real front and stand-in server processes on loopback.

Every fixture that starts processes stops them in its teardown, whatever the test did: first
through the control plane (`stop_endpoint`), then by killing any process group the control
plane started that is somehow still alive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from endpoint_helpers import Endpoint, StandIn, cleanup, start

from backends.local.endpoint.control import LocalEndpoints


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One endpoint shared by a module's tests: blue, green and two misbehaving deployments.
    Tests set the traffic they need first, so their order does not matter."""
    root = tmp_path_factory.mktemp("endpoint")
    model_dir = root / "model"
    model_dir.mkdir()
    control = LocalEndpoints(root / "state", StandIn(), ready_timeout=4.0, grace_seconds=2.0)
    try:
        endpoint = start(
            control,
            model_dir,
            "live",
            {
                "blue": [],
                "green": [],
                "broken": ["--fail-score"],
                "slow-shadow": ["--score-delay", "1.5", "--fail-score"],
            },
        )
        yield endpoint
        endpoint.client.close()
    finally:
        cleanup(control)


@pytest.fixture
def make_endpoint(tmp_path: Path) -> Iterator[Callable[..., Endpoint]]:
    """Factory for a fresh endpoint of the test's own (state in tmp_path), cleaned up after."""
    made: list[LocalEndpoints] = []
    endpoints: list[Endpoint] = []
    model_dir = tmp_path / "model"
    model_dir.mkdir()

    def make(name: str, deployments: dict[str, list[str]], **options: float) -> Endpoint:
        control = LocalEndpoints(tmp_path / "state", StandIn(), **options)
        made.append(control)  # registered before anything starts, so teardown sees it
        endpoints.append(start(control, model_dir, name, deployments))
        return endpoints[-1]

    try:
        yield make
    finally:
        for endpoint in endpoints:
            endpoint.client.close()
        for control in made:
            cleanup(control)
