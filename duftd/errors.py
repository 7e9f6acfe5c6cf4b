"""Errors duftd reports to its callers.

Every refusal is a :class:`DuftError`; its ``code`` (a :class:`dte_tools.wire.ErrorCode`)
travels on the wire as the ``error.code`` string of a control reply, and its message says
what was wrong and what to do about it. Add a subclass (with a new code) rather than
reusing a code for a different situation: clients branch on codes.
"""

from __future__ import annotations

from dte_tools.wire import ErrorCode


class DuftError(Exception):
    """Root of every error duftd reports; ``code`` is its stable wire name."""

    code: ErrorCode = ErrorCode.ERROR

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, str]:
        """The ``error`` object of a control reply."""
        return {"code": self.code, "message": self.message}


class ConfigError(DuftError):
    """The duft-config folder itself cannot be used (not a folder, no ``system/``)."""

    code = ErrorCode.BAD_CONFIG


class UnknownTaskError(DuftError):
    """No task has the requested address."""

    code = ErrorCode.UNKNOWN_TASK


class AmbiguousTaskError(DuftError):
    """A bare task id matches tasks in several apps; the caller must qualify it."""

    code = ErrorCode.AMBIGUOUS_TASK


class TaskNotRunnableError(DuftError):
    """The task is declared but cannot run (bad or missing script, bad id...)."""

    code = ErrorCode.TASK_NOT_RUNNABLE


class ParameterError(DuftError):
    """A caller's parameter value cannot be used."""

    code = ErrorCode.BAD_PARAMETER


class UnknownConnectionError(DuftError):
    """A connection was asked for that the task does not declare."""

    code = ErrorCode.UNKNOWN_CONNECTION


class UnknownRunError(DuftError):
    """No run has the requested id."""

    code = ErrorCode.UNKNOWN_RUN


class BadRequestError(DuftError):
    """A control request is malformed: frames, JSON, operation or arguments."""

    code = ErrorCode.BAD_REQUEST


class UnauthorizedError(DuftError):
    """A request is unsigned, badly signed, stale, replayed, or from the wrong signer."""

    code = ErrorCode.UNAUTHORIZED


class ShuttingDownError(DuftError):
    """The daemon is stopping and takes no new runs."""

    code = ErrorCode.SHUTTING_DOWN


class StorageFullError(DuftError):
    """The state folder's disk is full: nothing new can be recorded until space returns."""

    code = ErrorCode.STORAGE_FULL


class StartupError(DuftError):
    """The daemon cannot start (state folder locked, port taken, unsafe bind...)."""

    code = ErrorCode.STARTUP
