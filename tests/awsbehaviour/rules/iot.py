"""IoT: a deprecated thing type can be deleted only five minutes later."""

from __future__ import annotations

from tests.awsbehaviour.model import ErrorRule, param, trigger_param

THING_TYPE_SOURCE = (
    "https://docs.aws.amazon.com/iot/latest/developerguide/delete-thing-types.html ('Before you "
    "can delete a thing type, wait for five minutes after you deprecate it.'); "
    "terraform-provider-aws internal/service/iot/thing_type.go retries DeleteThingType for 6 "
    "minutes on InvalidRequestException 'Please wait for 5 minutes after deprecation and then "
    "retry'; the full text as the AWS CLI prints it: 'Cannot delete thing type : LightBulb. "
    "Please wait for 5 minutes after deprecation and then retry'")

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
)
