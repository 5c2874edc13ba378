"""Usage telemetry of the stack, off by default: the policy is `trainer.telemetry` (which
must stay importable without this package); re-exported here for the rest of the project."""

from __future__ import annotations

from trainer.telemetry import TELEMETRY_OFF, telemetry_off

__all__ = ["TELEMETRY_OFF", "telemetry_off"]
