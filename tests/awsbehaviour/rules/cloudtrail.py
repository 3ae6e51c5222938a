"""CloudTrail: five trails per region, a quota AWS does not raise (moto enforces none)."""

from __future__ import annotations

from tests.awsbehaviour.model import Call, ErrorRule

MOTO_ACCOUNT = "123456789012"
TRAILS_PER_REGION = 5


def _sixth_trail(call: Call) -> bool:
    """CreateTrail of a new name where the region already holds five trails (its own and the
    shadows of other regions' multi-region trails; moto's DescribeTrails lists both)."""
    if call.peek is None:
        return False
    trails = call.peek("cloudtrail", "describe_trails", includeShadowTrails=True)["trailList"]
    others = [t for t in trails if t.get("Name") != call.params.get("Name")]
    return len(others) >= TRAILS_PER_REGION


RULES = (
    ErrorRule(
        name="cloudtrail.trails-per-region-quota",
        service="cloudtrail", operation="CreateTrail",
        code="MaximumNumberOfTrailsExceededException",
        message="User: " + MOTO_ACCOUNT + " already has 5 trails in {region}.",
        when=_sixth_trail,
        source="https://docs.aws.amazon.com/awscloudtrail/latest/userguide/WhatIsCloudTrail-Limits.html "
               "('Trails per Region: 5 ... This quota cannot be increased'); "
               "https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_CreateTrail.html "
               "(MaximumNumberOfTrailsExceededException); the text as AWS answered it: "
               "https://github.com/linz/geostore/issues/1450 ('User: *** already has 5 trails in "
               "ap-southeast-2.')",
    ),
)
