"""What can go wrong in the client, each kind with the exit code a script sees."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1  # the API refused the request (4xx), or the VM went to ERROR
    USAGE = 2  # bad command line or client configuration
    UNREACHABLE = 3  # no answer from the API, or it answered that it is unavailable (5xx)
    TIMEOUT = 4  # --wait gave up
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


EXIT_CODES_HELP = """\
exit codes:
  0  done
  1  the API refused the request (its message is shown), or the VM went to ERROR
  2  bad command line or client configuration
  3  the API cannot be reached, or is unavailable (HTTP 5xx); worth retrying
  4  --wait timed out before the VM got where it was asked to go"""


class CLIError(Exception):
    """A failure to report in one line (and an optional hint on how to fix it)."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(CLIError):
    exit_code = ExitCode.USAGE


class Refused(CLIError):
    """The API answered with a 4xx."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, status: int, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


class NotOffered(Refused):
    """The API server has no such endpoint (an older server than this client)."""


class Unreachable(CLIError):
    exit_code = ExitCode.UNREACHABLE


class VMFailed(CLIError):
    """A VM waited on went to ERROR, was deleted, or was asked for something else meanwhile."""

    exit_code = ExitCode.REFUSED


class WaitTimeout(CLIError):
    exit_code = ExitCode.TIMEOUT
