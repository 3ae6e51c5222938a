"""The emulator boundary in server mode: moto answers IoT ListTagsForResource with HTTP 500 and
no AWS error code (measured on moto 5.2); the probe says "not supported" after one HTTP request:
no retry, no backoff (botocore retries every 500)."""

from __future__ import annotations

import os

from iotpipe.aws import AwsContext
from tests.support import CallLog


def test_server_mode_probe_reports_iot_tags_unreadable_in_one_request(server):
    aws = AwsContext(os.environ["AWS_DEFAULT_REGION"], endpoint_url=server)
    log = CallLog().attach(aws.events)
    sent: list[str] = []  # HTTP attempts, which botocore's retries repeat under one API call
    aws.events.register("before-send", lambda request, **_: sent.append(request.url))
    slept: list[float] = []
    aws.sleep = slept.append
    assert aws.supports("iot.list_tags_for_resource") is False
    assert aws.supports("iot.list_tags_for_resource") is False
    assert log.counts()["iot.ListTagsForResource"] == 1
    assert len([url for url in sent if "/tags" in url]) == 1 and slept == []
