"""IoT Core: a rule role not assumable yet, a policy IoT still sees attached after a detach, and
a deprecated thing type that can be deleted only five minutes later."""

from __future__ import annotations

from collections import deque

from tests.awsbehaviour.model import Call, ErrorRule, param, trigger_param

THING_TYPE_SOURCE = (
    "https://docs.aws.amazon.com/iot/latest/developerguide/delete-thing-types.html ('Before you "
    "can delete a thing type, wait for five minutes after you deprecate it.'); "
    "terraform-provider-aws internal/service/iot/thing_type.go retries DeleteThingType for 6 "
    "minutes on InvalidRequestException 'Please wait for 5 minutes after deprecation and then "
    "retry'; the full text as the AWS CLI prints it: 'Cannot delete thing type : LightBulb. "
    "Please wait for 5 minutes after deprecation and then retry'")

THROTTLE_SOURCE = (
    "https://docs.aws.amazon.com/general/latest/gr/iot-core.html (AWS IoT Core API throttling "
    "limits, per account and region: CreateKeysAndCertificate 10, CreateThing, AttachPolicy, "
    "AttachThingPrincipal 15 transactions per second); the error: "
    "https://docs.aws.amazon.com/iot/latest/apireference/API_AttachPolicy.html (ThrottlingException "
    "'The rate exceeds the limit.', HTTP 400)")
# The APIs a bulk import calls once per device; modelled as at most ``rate`` calls in any
# second on the behaviour clock (AWS does not document its bucket's burst).
THROTTLED = {"CreateKeysAndCertificate": 10, "CreateThing": 15, "AttachPolicy": 15,
             "AttachThingPrincipal": 15}
_RECENT: dict[str, deque[float]] = {}


def _over_rate(call: Call, rate: int) -> bool:
    """Whether this call is one more than ``rate`` in the second before it (and count it).

    A clock that went back is a new test's clock: the window starts again."""
    seen = _RECENT.setdefault(call.operation, deque())
    if seen and call.now < seen[-1]:
        seen.clear()
    while seen and seen[0] <= call.now - 1.0:
        seen.popleft()
    if len(seen) >= rate:
        return True  # refused: not counted, as AWS does not serve it
    seen.append(call.now)
    return False


RULES = (
    ErrorRule(
        name="iot.thing-type-delete-within-5-minutes",
        service="iot", operation="DeleteThingType", code="InvalidRequestException",
        message="Cannot delete thing type : {thingTypeName}. Please wait for 5 minutes after "
                "deprecation and then retry",
        after=("iot", "DeprecateThingType"), duration_s=300.0,
        trigger_key=trigger_param("thingTypeName"), call_key=param("thingTypeName"),
        source=THING_TYPE_SOURCE,
    ),
    ErrorRule(
        name="iot.create-rule-role-not-assumable",
        service="iot", operation="CreateTopicRule", code="InvalidRequestException",
        message="iot.amazonaws.com is unable to perform: sts:AssumeRole on resource: "
                "arn:aws:iam::123456789012:role/iot-rule-role-dev",
        after=("iam", "CreateRole"), duration_s=10.0,
        source="terraform-provider-aws internal/service/iot/topic_rule.go (CreateTopicRule retried "
               "while InvalidRequestException contains 'sts:AssumeRole'); the text: "
               "https://docs.aws.amazon.com/iot-sitewise/latest/userguide/troubleshoot-rule.html",
    ),
    ErrorRule(
        name="iot.delete-policy-after-detach",
        service="iot", operation="DeletePolicy", code="DeleteConflictException", http_status=409,
        message="The policy cannot be deleted as the policy is attached to one or more principals "
                "(name={policyName})",
        after=("iot", "DetachPolicy"), duration_s=300.0,
        trigger_key=trigger_param("policyName"), call_key=param("policyName"),
        source="https://docs.aws.amazon.com/iot/latest/apireference/API_DetachPolicy.html and "
               "API_DeletePolicy.html (DeleteConflictException); detachments are eventually "
               "consistent, seen for minutes (cdk destroy reports of this exact text)",
    ),
    *(
        ErrorRule(
            name=f"iot.throttle-{operation}",
            service="iot", operation=operation, code="ThrottlingException",
            message="The rate exceeds the limit.",
            when=lambda call, rate=rate: _over_rate(call, rate),
            source=THROTTLE_SOURCE,
        )
        for operation, rate in THROTTLED.items()
    ),
)
