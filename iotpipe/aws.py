"""One boto3 session per run: clients, retries, account id and AWS error helpers.

Retries live here, once, in botocore's own retry modes, so no step hand-writes a loop for
throttling. The only retry iotpipe adds itself is for IAM's documented eventual consistency
(`retry_while_role_propagates`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore
import botocore.loaders
import botocore.session
import jmespath
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    WaiterError,
)
from botocore.parsers import ResponseParserError

from iotpipe import __version__
from iotpipe.errors import (
    AccessDeniedError,
    AwsCallError,
    CredentialsError,
    EndpointError,
)
from iotpipe.progress import Progress, ProgressSink, ignore

T = TypeVar("T")

NOT_FOUND_CODES = frozenset({
    "ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NotFoundException",
    "NoSuchBucketPolicy", "NoSuchLifecycleConfiguration", "NoSuchTagSet", "NoSuchTagSetError",
    "ServerSideEncryptionConfigurationNotFoundError", "NoSuchPublicAccessBlockConfiguration",
    "OwnershipControlsNotFoundError", "TrailNotFoundException", "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist", "NotFound", "404", "NoSuchKey", "TableNotFoundException",
})
ACCESS_DENIED_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
    "AuthFailure", "InvalidAccessKeyId",
})
# Lambda and IoT reject a role for a few seconds after IAM created it; these are the messages.
ROLE_PROPAGATION_MARKERS = (
    "cannot be assumed", "does not have permissions", "not authorized to perform",
    "role defined for the function", "unable to assume", "is not authorized to assume",
    "invalid principal",
)
ROLE_PROPAGATION_TIMEOUT_S = 120.0


def error_code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Message", ""))
    return str(err)


def is_not_found(err: BaseException) -> bool:
    return error_code(err) in NOT_FOUND_CODES


def is_access_denied(err: BaseException) -> bool:
    return error_code(err) in ACCESS_DENIED_CODES


def translate(err: BaseException) -> BaseException:
    """Turn a botocore failure into the typed error the CLI reports in one line."""
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return CredentialsError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws configure`"
        )
    if isinstance(err, ProfileNotFound):
        return CredentialsError(f"AWS profile not found: {err}")
    if isinstance(err, NoRegionError):
        return CredentialsError("no AWS region: pass --region or set AWS_REGION")
    if isinstance(err, EndpointConnectionError):
        return EndpointError(f"cannot reach AWS endpoint {err.kwargs.get('endpoint_url', '')}: is the endpoint up?")
    if isinstance(err, (ConnectionClosedError, ReadTimeoutError)):
        return EndpointError(f"the AWS endpoint {err.kwargs.get('endpoint_url', '')} stopped answering: {err}")
    if isinstance(err, ResponseParserError):
        # A web page, a proxy's login form or another service: not an AWS API at all.
        return EndpointError("the endpoint answered with something that is not an AWS API response "
                             "(an HTML page?): check --endpoint-url / AWS_ENDPOINT_URL")
    if isinstance(err, ValueError) and str(err).startswith("Invalid endpoint"):
        return EndpointError(f"{err}: an endpoint URL needs a scheme, e.g. http://127.0.0.1:5000")
    if isinstance(err, WaiterError):
        return AwsCallError(f"gave up waiting ({err.kwargs.get('name')}): {err.kwargs.get('reason', err)}")
    if isinstance(err, ClientError):
        op = err.operation_name
        if is_access_denied(err):
            return AccessDeniedError(f"access denied calling {op}: {error_message(err)}")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        attempts = err.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if status >= 500:
            # botocore has already retried it (standard mode): the endpoint itself is failing.
            return EndpointError(f"{op}: the AWS endpoint answered HTTP {status} "
                                 f"({error_code(err)}: {error_message(err)}) after {attempts + 1} attempt(s)")
        return AwsCallError(f"{op} failed: {error_code(err)}: {error_message(err)}")
    return err


class AwsContext:
    """A boto3 session plus the run-wide client settings.

    ``endpoint_url`` is only passed when given: boto3 already honours ``AWS_ENDPOINT_URL`` and
    ``AWS_ENDPOINT_URL_<SERVICE>`` itself, and passing ``None`` would not defeat that.
    ``sleep`` is injectable so tests of the IAM propagation retry don't wait.
    """

    def __init__(
        self,
        region: str,
        *,
        profile: str | None = None,
        endpoint_url: str | None = None,
        session: boto3.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 10,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        try:
            self.session = session or boto3.Session(profile_name=profile, region_name=region)
        except ProfileNotFound as err:
            raise translate(err) from None
        self.session._session.register_component("data_loader", _shared_loader())
        self.sleep = sleep
        self.clock = clock
        self._config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            user_agent_extra=f"iotpipe/{__version__}",
            connect_timeout=10,
            read_timeout=60,
        )
        self._clients: dict[str, Any] = {}
        self._account: str | None = None
        self.on_progress: ProgressSink = ignore
        self.events.register("needs-retry.*.*", _remember_retry_reason)
        self.events.register("request-created.*.*", self._report_retry)

    def report(self, kind: str, message: str, **data: Any) -> None:
        """Tell the listener (the engine, then `render`) what a wait is waiting for."""
        self.on_progress(Progress(kind, message, data))

    def _report_retry(self, request: Any, operation_name: str = "", **_: Any) -> None:
        """botocore retries silently; a retry is a wait the operator should see."""
        context = getattr(request, "context", None) or {}
        attempt = context.get("retries", {}).get("attempt", 1)
        if attempt > 1:
            reason = context.get("iotpipe_retry_reason") or "no answer"
            self.report("endpoint-retry", f"{operation_name}: {reason}; retrying (attempt {attempt})",
                        operation=operation_name, attempt=attempt, reason=reason)

    @property
    def events(self):
        """The session's botocore event system: tests hang call counters and faults on it."""
        return self.session._session.get_component("event_emitter")

    def client(self, service: str) -> Any:
        if service not in self._clients:
            kwargs: dict[str, Any] = {"config": self._config}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            self._clients[service] = self.session.client(service, **kwargs)
        return self._clients[service]

    @property
    def account_id(self) -> str:
        if self._account is None:
            # The first call of every run doubles as the credentials and endpoint check: it
            # gets few retries and a short connect timeout, so a wrong --endpoint-url or a
            # dead network is reported in seconds rather than after a minute of backoff.
            kwargs: dict[str, Any] = {"config": self._config.merge(Config(
                retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5))}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            try:
                self._account = self.session.client("sts", **kwargs).get_caller_identity()["Account"]
            except Exception as err:  # noqa: BLE001 - translated, re-raised
                typed = translate(err)
                if typed is err and isinstance(err, (KeyError, TypeError, ValueError)):
                    # botocore parsed a 200 answer that has no GetCallerIdentity result in it
                    typed = translate(ResponseParserError(str(err)))
                raise typed from err
        return self._account

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return (
            f"arn:{self.partition}:{service}:{self.region if region else ''}:"
            f"{self.account_id if account else ''}:{resource}"
        )

    def wait(self, client: Any, waiter_name: str, *, what: str = "", **kwargs: Any) -> None:
        """Wait as ``client.get_waiter(waiter_name).wait(**kwargs)`` would, reporting each poll.

        botocore's waiter sleeps silently for up to minutes; this runs the same waiter model
        (operation, acceptors, delay, max attempts, ``WaiterConfig`` overrides) but says the
        state AWS reported at each attempt, and sleeps through the injected ``sleep``.
        """
        waiter = client.get_waiter(waiter_name)
        config = kwargs.pop("WaiterConfig", {})
        delay = config.get("Delay", waiter.config.delay)
        max_attempts = config.get("MaxAttempts", waiter.config.max_attempts)
        acceptors = list(waiter.config.acceptors)
        operation = getattr(client, botocore.xform_name(waiter.config.operation))
        what = what or next(iter(kwargs.values()), waiter_name)
        started = self.clock()
        for attempt in range(1, max_attempts + 1):
            try:
                response = operation(**kwargs)
            except ClientError as err:
                response = err.response
            matched = next((a for a in acceptors if a.matcher_func(response)), None)
            if matched is None and "Error" in response:
                raise WaiterError(name=waiter_name, last_response=response,
                                  reason=f"{error_code_of(response)}: {response['Error'].get('Message', '')}")
            if matched is not None and matched.state == "success":
                return
            if matched is not None and matched.state == "failure":
                raise WaiterError(name=waiter_name, last_response=response,
                                  reason=f"terminal state: {matched.explanation}")
            observed = _observed_state(response, acceptors)
            if attempt == max_attempts:
                raise WaiterError(name=waiter_name, last_response=response,
                                  reason=f"still {observed} after {max_attempts} attempts")
            self.report("waiter", f"waiting for {what}: AWS reports {observed} (attempt {attempt} of "
                                  f"{max_attempts}, {self.clock() - started:.0f} s)",
                        waiter=waiter_name, state=observed, attempt=attempt, max_attempts=max_attempts)
            self.sleep(delay)

    def retry_while_role_propagates(self, call: Callable[[], T]) -> T:
        """Run ``call``, retrying only while AWS says a new IAM role is not usable yet.

        IAM is eventually consistent: Lambda's CreateFunction and IoT's CreateTopicRule reject
        a role for several seconds after CreateRole succeeded. This is the documented case for
        our own retry (every other retry is botocore's); it is bounded and everything else is raised at once.
        """
        deadline = self.clock() + ROLE_PROPAGATION_TIMEOUT_S
        delay = 1.0
        while True:
            try:
                return call()
            except ClientError as err:
                message = error_message(err).lower()
                code = error_code(err)
                retryable = code in {"InvalidParameterValueException", "InvalidRequestException",
                                     "UnauthorizedException", "AccessDeniedException"} and any(
                    marker in message for marker in ROLE_PROPAGATION_MARKERS
                )
                if not retryable or self.clock() + delay > deadline:
                    raise
                waited = ROLE_PROPAGATION_TIMEOUT_S - (deadline - self.clock())
                self.report("role-propagation",
                            f"role not assumable yet ({err.operation_name}: {error_message(err)}), retrying in "
                            f"{delay:.0f} s ({waited:.0f} s of {ROLE_PROPAGATION_TIMEOUT_S:.0f} s)",
                            operation=err.operation_name, delay=delay, waited=waited)
                self.sleep(delay)
                delay = min(delay * 2, 10.0)


def error_code_of(response: dict[str, Any]) -> str:
    return str(response.get("Error", {}).get("Code", ""))


def _observed_state(response: dict[str, Any], acceptors: list[Any]) -> str:
    """What the waiter's own acceptors look at: a status field, or the error code."""
    if "Error" in response:
        return error_code_of(response) or "an error"
    for acceptor in acceptors:
        if acceptor.matcher in ("path", "pathAll", "pathAny") and acceptor.argument:
            value = jmespath.search(acceptor.argument, response)
            if value not in (None, []):
                return f"{acceptor.argument} = {value if not isinstance(value, list) else ', '.join(map(str, value))}"
    return "not ready"


def _remember_retry_reason(request_dict: Any = None, response: Any = None, caught_exception: Any = None,
                           **_: Any) -> None:
    """Keep why an attempt failed, for the retry report of the next attempt (never decides)."""
    if not isinstance(request_dict, dict):
        return
    if caught_exception is not None:
        reason = f"no answer from the endpoint ({caught_exception.__class__.__name__})"
    elif response is not None:
        status = response[0].status_code
        code = (response[1] or {}).get("Error", {}).get("Code", "") if len(response) > 1 else ""
        reason = f"the endpoint answered HTTP {status}" + (f" {code}" if code and code != str(status) else "")
    else:
        return
    request_dict.setdefault("context", {})["iotpipe_retry_reason"] = reason


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    """One loader per process: service models are parsed once, not once per session.

    Parsing botocore's JSON models is most of the cost of creating a client; every
    AwsContext (each engine, the demo's phases, the test suite's thousands) shares them.
    """
    return botocore.loaders.create_loader()


def default_region(profile: str | None) -> str | None:
    """The region the AWS CLI would use: AWS_REGION, AWS_DEFAULT_REGION, then the profile."""
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        session = botocore.session.Session(profile=profile)
        return session.get_config_variable("region")
    except ProfileNotFound as err:
        raise translate(err) from None
    except Exception:  # noqa: BLE001 - an unreadable ~/.aws/config leaves the default in force
        return None
