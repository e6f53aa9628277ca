"""The domain errors and their exit codes: the only module that names either."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # bad flags, config or input files
    GUARD_REFUSED = 3
    LOCK_HELD = 4
    GATE_FAILED = 5
    ROLLED_BACK = 6  # smoke or verify failed; the previous release serves again
    FROZEN = 7
    NOT_APPROVED = 8


def clip(text: str, limit: int = 80) -> str:
    """text as a message may echo it: a 100,000-character ref or value is cut, and says so."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class DeployError(Exception):
    """An expected failure: one line saying what is wrong and how to fix it."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DeployError):
    exit_code = ExitCode.USAGE


class UsageError(DeployError):
    exit_code = ExitCode.USAGE


class GuardRefused(DeployError):
    exit_code = ExitCode.GUARD_REFUSED


class LockHeld(DeployError):
    exit_code = ExitCode.LOCK_HELD


class GateFailed(DeployError):
    exit_code = ExitCode.GATE_FAILED


class RolledBack(DeployError):
    exit_code = ExitCode.ROLLED_BACK


class VerifyFailed(DeployError):
    """verify found a trigger, and the environment's policy has automatic rollback off."""


class Frozen(DeployError):
    exit_code = ExitCode.FROZEN


class NotApproved(DeployError):
    exit_code = ExitCode.NOT_APPROVED


class ServiceError(DeployError):
    """A server (Postgres, Redis, the app) did not start, stop or answer as asked."""


class MigrationError(DeployError):
    pass


class HostError(DeployError):
    """A command failed on a host; carries the host and the argv, never the environment."""

    def __init__(self, message: str, *, host: str = "local", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.host = host
