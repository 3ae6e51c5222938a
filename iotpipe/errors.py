"""Expected failures and the exit codes the CLI maps them to.

Every failure an operator can cause or fix (bad config, no credentials, a lock held, a
resource owned by someone else) is one of these classes, so the CLI can print one line and
exit with a documented code instead of a traceback. Anything else is a bug.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (documented in README.md, "Exit codes")."""

    OK = 0
    ERROR = 1  # an unexpected AWS error or a bug
    CHANGES_PENDING = 2  # plan: changes would be made; status: missing or drifted resources
    INCOMPLETE = 3  # destroy finished what it could; something completes later (thing type)
    USAGE = 64  # bad command line
    CONFIG = 65  # invalid configuration file or flag value
    STATE = 66  # corrupt, foreign or newer-schema state file
    CREDENTIALS = 67  # no credentials or no region
    OWNERSHIP = 68  # a resource with our name exists but is not iotpipe's for this env
    ENDPOINT = 69  # the AWS endpoint cannot be reached
    ABORTED = 70  # the operator declined a confirmation or stdin is not a terminal
    KEY_PENDING_DELETION = 72  # the env's KMS key is pending deletion and config says not to recover it
    QUOTA = 73  # an AWS quota that cannot be raised would be exceeded (CloudTrail's 5 trails)
    LOCKED = 75  # another run holds the env's lock, or wrote its shared state since this run read it
    ACCESS_DENIED = 77  # AWS refused a call for lack of permission
    INTERRUPTED = 130  # Ctrl-C


class IotpipeError(Exception):
    """Base of every expected failure; ``str(err)`` is the one line the operator sees."""

    exit_code: ExitCode = ExitCode.ERROR


class ConfigError(IotpipeError):
    exit_code = ExitCode.CONFIG


class StateError(IotpipeError):
    exit_code = ExitCode.STATE


class CredentialsError(IotpipeError):
    exit_code = ExitCode.CREDENTIALS


class EndpointError(IotpipeError):
    exit_code = ExitCode.ENDPOINT


class AccessDeniedError(IotpipeError):
    exit_code = ExitCode.ACCESS_DENIED


class OwnershipError(IotpipeError):
    exit_code = ExitCode.OWNERSHIP


class LockHeldError(IotpipeError):
    exit_code = ExitCode.LOCKED


class StateConflictError(IotpipeError):
    """A conditional state write lost a race: another run changed the state object first."""

    exit_code = ExitCode.LOCKED


class AbortedError(IotpipeError):
    exit_code = ExitCode.ABORTED


class QuotaError(IotpipeError):
    """Found before the first write: an env that cannot be finished is not started."""

    exit_code = ExitCode.QUOTA


class NotDeployedError(IotpipeError):
    """Nothing of the env exists yet: like `status` with missing resources, exit 2 (run `up`)."""

    exit_code = ExitCode.CHANGES_PENDING


class AwsCallError(IotpipeError):
    """An AWS error we did not expect, reduced to service, operation, code and message."""

    exit_code = ExitCode.ERROR
