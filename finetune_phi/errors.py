"""The root of the errors this project raises on purpose.

Every error a person can meet in normal use (a bad profile, data that does not validate, a job
that failed, a rollout that was rolled back, a backend that refused) derives from
`FinetunePhiError`. Its message is written for the person who runs the command: what happened
and what to do. The CLI prints it as one paragraph with no traceback and exits with
`exit_code`; anything else that escapes is a bug, and keeps its traceback.

The classes keep `ValueError` / `RuntimeError` as a second base where they had it, so code that
catches those still works. `serving/` (a floor below this one) has its own `BadRequest`,
answered as an HTTP status, never seen by the CLI.
"""

from __future__ import annotations


class FinetunePhiError(Exception):
    """An expected failure with a message for the user. Exit status 1."""

    exit_code = 1


class UsageError(FinetunePhiError):
    """The user's input is wrong: a profile key, an option, a data file. Exit status 2."""

    exit_code = 2
