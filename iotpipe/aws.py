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
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from iotpipe import __version__
from iotpipe.errors import (
    AccessDeniedError,
    AwsCallError,
    CredentialsError,
    EndpointError,
)

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
# Calls an endpoint may lack, with harmless parameters to probe them. moto (the emulator) has
# no IoT ListTagsForResource: in-process it raises NotImplementedError, in server mode it
# answers HTTP 500 without an AWS error code. On AWS the probe's rule does not exist, so the
# answer is an ordinary ResourceNotFoundException: supported.
CAPABILITY_PROBES: dict[str, Callable[[AwsContext], dict[str, Any]]] = {
    "iot.list_tags_for_resource": lambda aws: {
        "resourceArn": aws.arn("iot", "rule/iotpipe_capability_probe")},
}


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
    if isinstance(err, ClientError):
        op = err.operation_name
        if is_access_denied(err):
            return AccessDeniedError(f"access denied calling {op}: {error_message(err)}")
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
        # "service.operation" -> whether this endpoint implements it; filled by ``supports``
        # (tests set entries to model AWS where the emulator falls short).
        self.capabilities: dict[str, bool] = {}

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
                raise translate(err) from err
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

    def supports(self, capability: str) -> bool:
        """Whether the endpoint implements ``capability`` ("iot.list_tags_for_resource").

        The one place that knows the emulator lacks some calls: probed once per run, with a
        client that does not retry (a server-mode 500 would otherwise be retried ten times),
        so resources use the real mechanism on AWS and a documented fallback elsewhere.
        """
        if capability not in self.capabilities:
            service, operation = capability.split(".", 1)
            kwargs: dict[str, Any] = {"config": self._config.merge(Config(retries={"total_max_attempts": 1}))}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            probe = self.session.client(service, **kwargs)
            try:
                getattr(probe, operation)(**CAPABILITY_PROBES[capability](self))
                supported = True
            except NotImplementedError:
                supported = False
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                # An unimplemented call on the emulator: 500/501 with no AWS error code.
                supported = not (status >= 500 and error_code(err) in {str(status), "NotImplemented", ""})
            self.capabilities[capability] = supported
        return self.capabilities[capability]

    def retry_while_role_propagates(self, call: Callable[[], T]) -> T:
        """Run ``call``, retrying only while AWS says a new IAM role is not usable yet.

        IAM is eventually consistent: Lambda's CreateFunction and IoT's CreateTopicRule reject
        a role for several seconds after CreateRole succeeded. This is the documented case for
        our own retry (DESIGN.md rule 7); it is bounded and everything else is raised at once.
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
                self.sleep(delay)
                delay = min(delay * 2, 10.0)


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
