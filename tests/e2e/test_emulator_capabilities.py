"""The emulator boundary in server mode: moto answers IoT ListTagsForResource with HTTP 500 and
no AWS error code (measured on moto 5.2); the probe says "not supported" after one HTTP request:
no retry, no backoff (botocore retries every 500). A throttled probe is asked again, and
throttling alone never decides "not supported" (IoT answers ThrottlingException, HTTP 400:
AWS IoT API reference, Errors of each operation)."""

from __future__ import annotations

import os

import pytest

from iotpipe.aws import AwsContext
from tests.e2e.test_survival import _error_response
from tests.support import CallLog


def _probe_with_throttles(server, monkeypatch, throttled: int) -> tuple[bool, list[str]]:
    """The probe with IoT's throttling answer for its first ``throttled`` HTTP attempts."""
    import botocore.retries.standard as standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    aws = AwsContext(os.environ["AWS_DEFAULT_REGION"], endpoint_url=server)
    sent: list[str] = []

    def throttle(request, **_):
        if "/tags" not in request.url:
            return None
        sent.append(request.url)
        return _error_response(request.url, "rest-json", 400, "ThrottlingException") \
            if len(sent) <= throttled else None

    aws.events.register("before-send.iot", throttle)
    return aws.supports("iot.list_tags_for_resource"), sent


def test_server_mode_probe_reports_iot_tags_unreadable_in_one_request(server):
    aws = AwsContext(os.environ["AWS_DEFAULT_REGION"], endpoint_url=server)
    log = CallLog().attach(aws.events)
    sent: list[str] = []  # HTTP attempts, which botocore's retries repeat under one API call
    aws.events.register("before-send", lambda request, **_: sent.append(request.url))
    assert aws.supports("iot.list_tags_for_resource") is False
    assert aws.supports("iot.list_tags_for_resource") is False
    assert log.counts()["iot.ListTagsForResource"] == 1
    assert len([url for url in sent if "/tags" in url]) == 1


@pytest.mark.parametrize("throttled, attempts, supported", [
    (2, 3, False),  # asked again until the emulator's own answer decides
    (9, 3, True),  # throttled to the end: the AWS default (tags are read), never "unsupported"
])
def test_a_throttled_probe_is_asked_again_and_throttling_decides_nothing(
        server, monkeypatch, throttled, attempts, supported):
    answer, sent = _probe_with_throttles(server, monkeypatch, throttled)
    assert answer is supported and len(sent) == attempts
