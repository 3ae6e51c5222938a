"""One boto3 session per run: clients, retries, account id and AWS error helpers.

Retries live here, once: botocore's own retry modes for throttling and 5xx, and one bounded
loop of iotpipe's (`call_with_retries`) for the transient refusals AWS documents (a new role not
assumable yet, backups being enabled, a bucket name still being released...), each named by a
`Transient` below, beside the AWS behaviour it stands for. No step hand-writes a loop.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from iotpipe.timing import BACKUPS_POLL_S, KEY_POLL_S, PROPAGATION_POLL_S

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
# Calls an endpoint may lack, with harmless parameters to probe them. moto (the emulator) has
# no IoT ListTagsForResource: in-process it raises NotImplementedError, in server mode it
# answers HTTP 500 without an AWS error code. On AWS the probe's rule does not exist, so the
# answer is an ordinary ResourceNotFoundException: supported.
CAPABILITY_PROBES: dict[str, Callable[[AwsContext], dict[str, Any]]] = {
    "iot.list_tags_for_resource": lambda aws: {
        "resourceArn": aws.arn("iot", "rule/iotpipe_capability_probe")},
}


PROBE_ATTEMPTS = 3


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


# "User: arn:aws:iam::123456789012:user/x is not authorized to perform: iam:PassRole on resource:
# ..." names the caller (a user, the root, or an assumed role's session): AWS refused *us*.
_CALLER_DENIAL = re.compile(
    r"user: arn:aws[\w-]*:(iam|sts)::\d{12}:(user/|root|assumed-role/|federated-user/)"
    r"\S* is not authorized to perform")


def is_caller_denied(err: BaseException) -> bool:
    """AWS refused the caller itself: no amount of waiting changes that.

    Access-denied codes are always about the caller (services report a role they cannot use
    with InvalidParameterValueException or InvalidRequestException); so is a denial of
    ``iam:PassRole``, which only the caller ever needs, whatever code carries it.
    """
    if error_code(err) in ACCESS_DENIED_CODES:
        return True
    message = error_message(err).lower()
    if "iam:passrole" in message and "not authorized" in message:
        return True
    return error_code(err) in {"UnauthorizedException", "AuthorizationErrorException"} and bool(
        _CALLER_DENIAL.search(message))


def is_access_denied(err: BaseException) -> bool:
    return is_caller_denied(err)


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
    ``sleep`` and ``clock`` are injectable so tests of the retries and polls do not wait.
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
        self.profile = profile
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
        # boto3 clients are thread-safe once made, but Session.client() is not: the engine's
        # worker threads make them under this lock (the account is asked once under it too).
        self._lock = threading.RLock()
        self._probe_lock = threading.Lock()  # one probe per capability, even asked at once
        self._thread = threading.local()  # per thread: whether it is probing (see supports)
        self._account: str | None = None
        # "service.operation" -> whether this endpoint implements it; filled by ``supports``
        # (tests set entries to model AWS where the emulator falls short).
        self.capabilities: dict[str, bool] = {}
        self.on_progress: ProgressSink = ignore
        self.events.register("needs-retry.*.*", _remember_retry_reason)
        self.events.register("request-created.*.*", self._report_retry)

    @property
    def _probing(self) -> bool:
        return getattr(self._thread, "probing", False)

    @_probing.setter
    def _probing(self, value: bool) -> None:
        self._thread.probing = value

    def report(self, kind: str, message: str, **data: Any) -> None:
        """Tell the listener (the engine, then `render`) what a wait is waiting for."""
        self.on_progress(Progress(kind, message, data))

    def _report_retry(self, request: Any, operation_name: str = "", **_: Any) -> None:
        """botocore retries silently; a retry is a wait the operator should see."""
        if self._probing:
            return
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
        with self._lock:
            if service not in self._clients:
                kwargs: dict[str, Any] = {"config": self._config}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                self._clients[service] = self.session.client(service, **kwargs)
            return self._clients[service]

    @property
    def account_id(self) -> str:
        with self._lock:
            return self._account_id()

    def _account_id(self) -> str:
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

    def retrying(self, call: Callable[[], T], *transients: Transient) -> T:
        """``call_with_retries`` on this run's injected sleep and clock."""
        def said(transient: Transient, err: BaseException, pause: float, waited: float) -> None:
            role = transient is ROLE_NOT_ASSUMABLE_YET
            self.report("role-propagation" if role else "retry",
                        f"{'role not assumable yet' if role else transient.name} "
                        f"({getattr(err, 'operation_name', '')}: "
                                 f"{error_message(err)}), retrying in {pause:.0f} s "
                                 f"({waited:.0f} s of {transient.timeout_s:.0f} s)",
                        transient=transient.name, delay=pause, waited=waited)

        return call_with_retries(call, *transients, sleep=self.sleep, clock=self.clock, on_retry=said)

    def supports(self, capability: str) -> bool:
        """Whether the endpoint implements ``capability`` ("iot.list_tags_for_resource").

        The one place that knows the emulator lacks some calls: probed once per run, so
        resources use the real mechanism on AWS and a documented fallback elsewhere. A
        throttled or failing AWS answer is asked again by botocore's standard retries (three
        attempts: throttling must not decide "unsupported"), but an emulator's "not
        implemented", a 500 without an AWS error code, ends the probe at its first answer:
        botocore would retry it like any 500, a second of backoff per run for an answer that
        never changes. The retries are iotpipe's question, not a wait: not reported.
        """
        with self._probe_lock:
            return self._supports(capability)

    def _supports(self, capability: str) -> bool:
        if capability not in self.capabilities:
            service, operation = capability.split(".", 1)
            # (Config.merge replaces the whole retries dict: the mode is named again, or the probe
            # would fall back to legacy retries, which do not retry TooManyRequestsException.)
            kwargs: dict[str, Any] = {"config": self._config.merge(
                Config(retries={"mode": "standard", "total_max_attempts": PROBE_ATTEMPTS}))}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            with self._lock:
                probe = self.session.client(service, **kwargs)
            probe.meta.events.register_first("needs-retry", _stop_at_unimplemented)
            self._probing = True
            try:
                getattr(probe, operation)(**CAPABILITY_PROBES[capability](self))
                supported = True
            except (NotImplementedError, _Unimplemented):  # moto in-process; the emulator's 500
                supported = False
            except ClientError as err:
                supported = not _is_unimplemented(err.response)
            finally:
                self._probing = False
            self.capabilities[capability] = supported
        return self.capabilities[capability]


class _Unimplemented(Exception):
    """The endpoint does not implement the probed call."""


def _is_unimplemented(parsed: dict[str, Any]) -> bool:
    """An emulator's unimplemented call: 500/501 with no AWS error code (moto 5.2 in server mode)."""
    status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = str(parsed.get("Error", {}).get("Code", ""))
    return status >= 500 and code in {str(status), "NotImplemented", ""}


def _stop_at_unimplemented(response: Any = None, **_: Any) -> None:
    """needs-retry handler of the probe client: an unimplemented call is not asked again."""
    if response is not None and _is_unimplemented(response[1] or {}):
        raise _Unimplemented()


# --------------------------------------------------------------------------------------------
# Transient refusals: AWS says "not yet" for a while, then does it. Each is data: which answer,
# for how long at most, and where AWS (or terraform-provider-aws, which retries the same) says so.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transient:
    """One documented "try again later" answer of AWS, and how long it may last."""

    name: str  # added to AWS's message when the bound is exhausted
    matches: Callable[[BaseException], bool]
    timeout_s: float  # the whole bound, from the first attempt
    source: str
    first_delay_s: float = 1.0
    max_delay_s: float = 10.0


def _code_and_text(codes: frozenset[str] | set[str], *markers: str) -> Callable[[BaseException], bool]:
    def matches(err: BaseException) -> bool:
        if error_code(err) not in codes or is_caller_denied(err):
            return False
        message = error_message(err).lower()
        return not markers or any(m in message for m in markers)

    return matches


ROLE_NOT_ASSUMABLE_YET = Transient(
    "the new IAM role is not usable by the service yet",
    _code_and_text(
        {"InvalidParameterValueException", "InvalidRequestException"},
        # Lambda CreateFunction/UpdateFunctionConfiguration
        "cannot be assumed by lambda", "role defined for the function",
        # Lambda CreateFunction with KMSKeyArn: the grant names the role, unknown to KMS yet
        "kms key is invalid for creategrant", "does not refer to a valid principal",
        # Lambda CreateEventSourceMapping: the role's policy is not visible to the poller yet
        "cannot access stream", "please ensure the role can perform", "does not have permissions",
        # IoT CreateTopicRule/ReplaceTopicRule
        "sts:assumerole", "try again in a few seconds", "unable to assume", "is not authorized to assume",
        "invalid principal",
    ),
    # IAM is eventually consistent; Chalice and terraform-provider-aws bound this at ~2 minutes.
    timeout_s=120.0,
    # Asked again at an even, short cadence: the role turns usable seconds after CreateRole,
    # and a doubling backoff would find out up to half the time waited too late.
    first_delay_s=PROPAGATION_POLL_S,
    max_delay_s=PROPAGATION_POLL_S,
    source="https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html"
           "#troubleshoot_general_eventual-consistency; terraform-provider-aws "
           "internal/service/lambda/function.go, internal/service/iot/topic_rule.go "
           "(RetryWhenAWSErrMessageContains ... \"sts:AssumeRole\")",
)
BACKUPS_BEING_ENABLED = Transient(
    "DynamoDB is still enabling backups for the new table",
    _code_and_text({"ContinuousBackupsUnavailableException"}, "backups are being enabled"),
    timeout_s=600.0,
    first_delay_s=BACKUPS_POLL_S,
    max_delay_s=BACKUPS_POLL_S,
    source="terraform-provider-aws internal/service/dynamodb/table.go (updatePITR retries "
           "ContinuousBackupsUnavailableException \"Backups are being enabled\")",
)
KEY_NOT_FOUND_YET = Transient(
    "KMS does not see the new key everywhere yet",
    _code_and_text({"NotFoundException"}),
    timeout_s=120.0,
    first_delay_s=KEY_POLL_S,
    max_delay_s=KEY_POLL_S,
    source="https://docs.aws.amazon.com/kms/latest/developerguide/accessing-kms.html"
           "#programming-eventual-consistency; terraform-provider-aws internal/service/kms/key.go "
           "(updateKeyRotationEnabled/updateKeyPolicy: RetryWhenIsA NotFoundException)",
)
BUCKET_NAME_BEING_RELEASED = Transient(
    "S3 is still releasing the name of a bucket deleted moments ago",
    _code_and_text({"OperationAborted"}, "conflicting conditional operation"),
    timeout_s=180.0,
    max_delay_s=15.0,
    source="https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html (OperationAborted, "
           "409); terraform-provider-aws internal/service/s3 (retries OperationAborted)",
)
MAPPING_IN_USE = Transient(
    "the event source mapping is still being created or updated",
    _code_and_text({"ResourceInUseException"}),
    timeout_s=300.0,
    source="https://docs.aws.amazon.com/lambda/latest/api/API_DeleteEventSourceMapping.html "
           "(ResourceInUseException: 'you tried to delete an event source mapping currently UPDATING')",
)
POLICY_DETACH_PROPAGATING = Transient(
    "IoT still sees the policy attached to a principal it was just detached from",
    _code_and_text({"DeleteConflictException", "InvalidRequestException"}, "attached", "detached"),
    timeout_s=60.0,
    max_delay_s=8.0,
    source="https://docs.aws.amazon.com/iot/latest/apireference/API_DetachThingPrincipal.html "
           "('DetachThingPrincipal is asynchronous. It might take several seconds')",
)
QUEUE_NAME_BEING_RELEASED = Transient(
    "SQS keeps a deleted queue's name for 60 seconds",
    _code_and_text({"AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently"}),
    timeout_s=90.0,
    max_delay_s=15.0,
    source="https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_CreateQueue.html "
           "(QueueDeletedRecently: 'You must wait 60 seconds after deleting a queue before you can "
           "create another with the same name.')",
)


def call_with_retries(call: Callable[[], T], *transients: Transient,
                      sleep: Callable[[float], None], clock: Callable[[], float],
                      on_retry: Callable[[Transient, BaseException, float, float], None] | None = None) -> T:
    """Run ``call``; while it fails with one of ``transients``, back off and try again.

    Everything else is raised at once: a permanent refusal (the caller's own access denied, a
    malformed request) must not cost minutes of retries. Each transient has its own bound,
    counted from the first attempt on the clock *and* in time slept (an injected sleep that
    does not move the clock still ends the loop). Backoff doubles up to the transient's cap,
    and the last pause is cut so that it ends at the bound, never after it: the final attempt
    is made right at the deadline, then the error is raised as AWS gave it.
    """
    started = clock()
    slept = 0.0
    delay: float | None = None
    while True:
        try:
            return call()
        except Exception as err:
            transient = next((t for t in transients if t.matches(err)), None)
            if transient is None:
                raise
            remaining = transient.timeout_s - max(clock() - started, slept)
            if remaining <= 0:
                _annotate(err, f"still refused after {transient.timeout_s:.0f}s of retries: {transient.name}")
                raise
            delay = transient.first_delay_s if delay is None else min(delay * 2, transient.max_delay_s)
            pause = min(delay, remaining)
            if on_retry is not None:
                on_retry(transient, err, pause, max(clock() - started, slept))
            sleep(pause)
            slept += pause


def _annotate(err: BaseException, note: str) -> None:
    """Say in the one line the operator sees (translate() reads the message) that we waited."""
    if isinstance(err, ClientError):
        error = err.response.setdefault("Error", {})
        error["Message"] = f"{error.get('Message', '')} ({note})"


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


# Every AWS service iotpipe's commands call (tests/test_fleet.py holds a full run to it).
SERVICES = ("cloudtrail", "cloudwatch", "dynamodb", "iam", "iot", "kinesis", "kms", "lambda", "logs", "s3",
            "sns", "sqs", "sts")


def preload_models() -> None:
    """Parse the models of SERVICES into the shared loader now, as a run's clients would.

    For `fleet`, before it forks its workers, which then share them. Finding a model walks
    botocore's whole data directory once per kind of model (a tenth of a second each).
    """
    loader = _shared_loader()
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        known = set(loader.list_available_services(kind))
        for service in SERVICES:
            if service in known:
                loader.load_service_model(service, kind)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)


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
