"""A new env skips no reading: the topic rule goes live only once the mapping reads Enabled.

On AWS a new event source mapping is Creating for a while (the behaviour table's
lambda.mapping-creating), and a mapping with StartingPosition=LATEST starts from the tip of
each shard it finds when it turns Enabled: whatever the topic rule put into the stream before
then is never read. moto has the mapping Enabled at once, so without the rule this ordering
problem is invisible.
"""

from __future__ import annotations

import boto3

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from tests.awsbehaviour import FakeClock, install, rules_named
from tests.awsbehaviour.fixture import attach, fake_waiter_time
from tests.support import by_id

REGION = "us-east-1"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:123456789012:stream/iot-sensor-stream-dev"


def test_the_topic_rule_goes_live_only_after_the_mapping_reads_enabled(moto, tmp_path, monkeypatch):
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)
    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
    aws = AwsContext(REGION, sleep=clock.sleep, clock=clock.now)
    behaviour = attach(aws, rules_named("lambda.mapping-creating"), clock)
    # What Lambda would say about the mapping at any moment: a client that sees the same AWS.
    session = boto3.session.Session(region_name=REGION)
    install(session._session.get_component("event_emitter"), behaviour)
    lam = session.client("lambda")
    seen: list[tuple[str, float, list[str]]] = []

    def rule_goes_live(model, params, **_):
        if model.name == "EnableTopicRule" or (model.name == "CreateTopicRule" and not
                                               params.get("topicRulePayload", {}).get("ruleDisabled")):
            states = [m.get("State") for m in lam.list_event_source_mappings(
                EventSourceArn=STREAM_ARN)["EventSourceMappings"]]
            seen.append((model.name, clock.now(), states))

    aws.events.register("provide-client-params.iot.*", rule_goes_live, unique_id="rule-goes-live")
    result = make_engine(config, aws, tmp_path / "state").up()

    assert "lambda.mapping-creating" in behaviour.fired_rules()  # the mapping really was Creating
    (live,) = seen
    assert live[2] == ["Enabled"], f"the topic rule went live while the mapping was {live[2] or 'absent'}"
    assert by_id(result, "lambda.event_source_mapping").action == "create"
    assert by_id(result, "iot.topic_rule").action == "create"
    assert clock.total_slept >= 15.0  # the wait happened on the injected clock, not in real time
