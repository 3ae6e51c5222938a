"""The behaviour proxy itself: it names every request of every protocol iotpipe speaks, refuses
in each protocol's wire format (botocore raises the modelled class with AWS's message), rewrites
and ghosts JSON answers, arms rules from real answers, and gives a subprocess virtual time."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from tests.awsbehaviour import ErrorRule, rules_named
from tests.awsbehaviour.model import param
from tests.awsbehaviour.proxy import TIMESHIM, BehaviourProxy

REGION = "us-east-1"
DOC = "https://docs.aws.amazon.com/"  # these rules are made up for the test; a source is required


def _always(name: str, service: str, operation: str, code: str, message: str, **kw) -> ErrorRule:
    return ErrorRule(name=f"test.{name}", service=service, operation=operation, code=code,
                     message=message, source=DOC, **kw)


@pytest.fixture
def through(server):
    """``through(rules)``: a started proxy with those rules, and clients that go through it."""
    started: list[BehaviourProxy] = []

    def make(rules):
        running = BehaviourProxy(server, rules, region=REGION).start()
        started.append(running)
        session = boto3.session.Session(region_name=REGION)
        return running, lambda service: session.client(service, endpoint_url=running.url)

    yield make
    for running in started:
        running.stop()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "def handler(e, c):\n    return e\n")
    return buf.getvalue()


def _role(clients) -> str:
    return clients.iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "lambda.amazonaws.com"}}]}),
    )["Role"]["Arn"]


def test_every_protocol_is_named_with_its_parameters(through, clients):
    proxy, client = through([])
    s3, lam, iot = client("s3"), client("lambda"), client("iot")
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="raw/dt=1/x y.json", Body=b"{}")
    s3.copy_object(Bucket="bkt", Key="copy", CopySource="bkt/raw/dt=1/x y.json")
    s3.head_object(Bucket="bkt", Key="raw/dt=1/x y.json")
    s3.list_objects_v2(Bucket="bkt")
    s3.put_bucket_versioning(Bucket="bkt", VersioningConfiguration={"Status": "Enabled"})
    client("dynamodb").list_tables()
    client("sqs").create_queue(QueueName="q")
    client("iam").get_user()
    client("sts").get_caller_identity()
    lam.create_function(FunctionName="f", Runtime="python3.11", Role=_role(clients),
                        Handler="index.handler", Code={"ZipFile": _zip()})
    lam.get_function(FunctionName=lam.get_function(FunctionName="f")["Configuration"]["FunctionArn"])
    lam.list_event_source_mappings(EventSourceArn="arn:aws:kinesis:us-east-1:123456789012:stream/s")
    iot.create_thing_type(thingTypeName="tt")
    iot.describe_thing_type(thingTypeName="tt")
    named = [(s.service, s.operation) for s in proxy.seen]
    assert named == [
        ("s3", "CreateBucket"), ("s3", "PutObject"), ("s3", "CopyObject"), ("s3", "HeadObject"),
        ("s3", "ListObjectsV2"), ("s3", "PutBucketVersioning"), ("dynamodb", "ListTables"),
        ("sqs", "CreateQueue"), ("iam", "GetUser"), ("sts", "GetCallerIdentity"),
        ("lambda", "CreateFunction"), ("lambda", "GetFunction"), ("lambda", "GetFunction"),
        ("lambda", "ListEventSourceMappings"), ("iot", "CreateThingType"), ("iot", "DescribeThingType"),
    ]
    assert all(s.answered_by == "moto" and s.status < 300 for s in proxy.seen)


@pytest.mark.parametrize("service, operation, code, call, exception", [
    ("dynamodb", "DescribeTable", "ResourceInUseException",  # json
     lambda c: c.describe_table(TableName="t"), "ResourceInUseException"),
    ("kms", "CreateKey", "LimitExceededException",  # json 1.1
     lambda c: c.create_key(), "LimitExceededException"),
    ("iam", "GetRole", "NoSuchEntity",  # query
     lambda c: c.get_role(RoleName="r"), "NoSuchEntityException"),
    ("s3", "GetBucketVersioning", "NoSuchBucket",  # rest-xml
     lambda c: c.get_bucket_versioning(Bucket="bkt"), "NoSuchBucket"),
    ("lambda", "GetFunction", "ResourceConflictException",  # rest-json
     lambda c: c.get_function(FunctionName="f"), "ResourceConflictException"),
    ("iot", "DeletePolicy", "DeleteConflictException",  # rest-json, DELETE with a path label
     lambda c: c.delete_policy(policyName="p"), "DeleteConflictException"),
])
def test_a_refusal_is_the_modelled_exception_in_every_protocol(through, service, operation, code,
                                                               call, exception):
    message = f"refused by the table: {operation} <&> '{code}'"
    proxy, client = through([_always("refuse", service, operation, code, message)])
    made = client(service)
    with pytest.raises(getattr(made.exceptions, exception)) as err:
        call(made)
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["Error"]["Message"] == message
    assert [(s.operation, s.answered_by) for s in proxy.seen] == [(operation, "test.refuse")]


def test_a_head_refusal_has_no_body_and_still_raises(through):
    proxy, client = through([_always("head", "s3", "HeadBucket", "403", "Forbidden",
                                     http_status=403)])
    with pytest.raises(client("s3").exceptions.ClientError) as err:
        client("s3").head_bucket(Bucket="bkt")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_sqs_query_compatible_code_and_nothing_reaches_moto(through, clients):
    """SQS speaks JSON but reports its query-era codes: botocore maps the one in
    x-amzn-query-error to sqs.exceptions.QueueDeletedRecently."""
    proxy, client = through(rules_named("sqs.queue-deleted-recently"))
    sqs = client("sqs")
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(sqs.exceptions.QueueDeletedRecently) as err:
        sqs.create_queue(QueueName="q")
    assert err.value.response["Error"]["Message"] == (
        "You must wait 60 seconds after deleting a queue before you can create another with the "
        "same name.")
    assert clients.client("sqs").list_queues().get("QueueUrls", []) == []
    sqs.create_queue(QueueName="other")  # another name is not concerned
    proxy.clock.advance(60)
    sqs.create_queue(QueueName="q")


def test_states_rewrite_json_answers_and_triggers_arm_from_real_answers(through, clients):
    """DynamoDB's answer keeps a valid x-amz-crc32 (botocore checks it); the mapping's rule is
    armed by the UUID in CreateEventSourceMapping's answer; its ghost is served after delete."""
    proxy, client = through(rules_named("dynamodb.table-creating", "lambda.mapping-creating",
                                        "lambda.mapping-deleting"))
    ddb, lam = client("dynamodb"), client("lambda")
    ddb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}])
    assert ddb.describe_table(TableName="t")["Table"]["TableStatus"] == "CREATING"

    clients.kinesis.create_stream(StreamName="s", ShardCount=1)
    stream = clients.kinesis.describe_stream_summary(StreamName="s")["StreamDescriptionSummary"]["StreamARN"]
    lam.create_function(FunctionName="f", Runtime="python3.11", Role=_role(clients),
                        Handler="index.handler", Code={"ZipFile": _zip()})
    uuid = lam.create_event_source_mapping(EventSourceArn=stream, FunctionName="f",
                                           StartingPosition="LATEST")["UUID"]
    assert lam.get_event_source_mapping(UUID=uuid)["State"] == "Creating"
    listed = lam.list_event_source_mappings(EventSourceArn=stream)["EventSourceMappings"]
    assert [m["State"] for m in listed] == ["Creating"]

    proxy.clock.advance(15)
    lam.delete_event_source_mapping(UUID=uuid)
    assert clients.client("lambda").list_event_source_mappings()["EventSourceMappings"] == []
    ghost = lam.get_event_source_mapping(UUID=uuid)
    assert ghost["State"] == "Deleting" and ghost["EventSourceArn"] == stream
    listed = lam.list_event_source_mappings(EventSourceArn=stream)["EventSourceMappings"]
    assert [(m["UUID"], m["State"]) for m in listed] == [(uuid, "Deleting")]
    assert lam.list_event_source_mappings(EventSourceArn=stream + "-other")["EventSourceMappings"] == []
    proxy.clock.advance(20)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_event_source_mapping(UUID=uuid)
    assert lam.list_event_source_mappings(EventSourceArn=stream)["EventSourceMappings"] == []


def test_the_thing_type_rule_keys_on_the_path_label(through):
    proxy, client = through(rules_named("iot.thing-type-delete-within-5-minutes"))
    iot = client("iot")
    for name in ("a", "b"):
        iot.create_thing_type(thingTypeName=name)
    iot.deprecate_thing_type(thingTypeName="a")
    proxy.clock.advance(200)
    iot.deprecate_thing_type(thingTypeName="b")
    with pytest.raises(iot.exceptions.InvalidRequestException) as err:
        iot.delete_thing_type(thingTypeName="a")
    assert err.value.response["Error"]["Message"] == (
        "Cannot delete thing type : a. Please wait for 5 minutes after deprecation and then retry")
    proxy.clock.advance(100)  # a: 300 s after deprecation; b: 100 s
    iot.delete_thing_type(thingTypeName="a")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing_type(thingTypeName="b")


def test_a_quota_rule_peeks_at_moto_behind_the_proxy(through, clients):
    rule = _always("quota", "sqs", "CreateQueue", "AWS.SimpleQueueService.QueueDeletedRecently",
                   "quota", when=lambda call: len(call.peek("sqs", "list_queues").get(
                       "QueueUrls", [])) >= 1)
    _proxy, client = through([rule])
    client("sqs").create_queue(QueueName="one")
    with pytest.raises(client("sqs").exceptions.QueueDeletedRecently):
        client("sqs").create_queue(QueueName="two")


def test_a_subprocess_sleeps_on_the_proxy_clock(through):
    proxy, _client = through([])
    env = {**os.environ, **proxy.subprocess_env(), "PYTHONPATH": str(TIMESHIM)}
    script = ("import threading, time\n"
              "start = time.monotonic()\n"
              "threads = [threading.Thread(target=time.sleep, args=(150,)) for _ in range(2)]\n"
              "[t.start() for t in threads]; [t.join() for t in threads]\n"
              "print(round(time.monotonic() - start))\n")
    began, clock0 = time.monotonic(), proxy.clock.now()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 300  # the process's monotonic moved by what it slept
    assert proxy.clock.now() - clock0 == 300
    assert time.monotonic() - began < 20  # nothing waited for real


def test_without_the_clock_variable_time_is_untouched():
    env = {k: v for k, v in os.environ.items() if k != "AWSBEHAVIOUR_CLOCK_URL"}
    env["PYTHONPATH"] = str(TIMESHIM)
    out = subprocess.run([sys.executable, "-c", "import time; print(time.sleep.__module__)"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "time"


def test_the_proxy_stops_by_itself_when_idle(server):
    proxy = BehaviourProxy(server, [], region=REGION, idle_s=0.3).start()
    deadline = time.monotonic() + 10
    while proxy._threads and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not proxy._threads
    with pytest.raises(EndpointConnectionError):
        boto3.client("sqs", region_name=REGION, endpoint_url=proxy.url,
                     config=boto3.session.Config(retries={"total_max_attempts": 1},
                                                 connect_timeout=1)).list_queues()


def test_ghost_rules_on_xml_services_are_refused_up_front(server):
    from tests.awsbehaviour import GhostRule

    ghost = GhostRule(name="test.s3-ghost", service="s3", reads=("HeadBucket",), body=lambda k: {},
                      after=("s3", "DeleteBucket"), duration_s=1, source=DOC,
                      call_key=param("Bucket"))
    with pytest.raises(ValueError, match="JSON answers only"):
        BehaviourProxy(server, [ghost], region=REGION)


def test_an_xml_answer_gets_the_states_of_its_header_members(through, clients):
    """S3 keeps x-amz-transition-default-minimum-object-size; moto drops it (rule from i7b)."""
    proxy, client = through(rules_named("s3.lifecycle-keeps-transition-minimum-object-size"))
    s3 = client("s3")
    s3.create_bucket(Bucket="bkt")
    s3.put_bucket_lifecycle_configuration(
        Bucket="bkt", TransitionDefaultMinimumObjectSize="varies_by_storage_class",
        LifecycleConfiguration={"Rules": [{"ID": "r", "Status": "Enabled", "Filter": {},
                                           "Expiration": {"Days": 1}}]})
    got = s3.get_bucket_lifecycle_configuration(Bucket="bkt")
    assert got["TransitionDefaultMinimumObjectSize"] == "varies_by_storage_class"
    assert got["Rules"][0]["ID"] == "r"
    direct = clients.s3.get_bucket_lifecycle_configuration(Bucket="bkt")
    assert direct.get("TransitionDefaultMinimumObjectSize") != "varies_by_storage_class"


def test_a_chunked_request_body_is_forwarded_whole(through, clients):
    import http.client

    proxy, _client = through([])
    clients.s3.create_bucket(Bucket="bkt")
    conn = http.client.HTTPConnection(*proxy._server.server_address[:2], timeout=10)
    conn.putrequest("PUT", "/bkt/chunked.txt")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/"
                                    "aws4_request, SignedHeaders=host, Signature=0")
    conn.endheaders()
    for part in (b"hello ", b"chunked ", b"world"):
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 200
    assert clients.s3.get_object(Bucket="bkt", Key="chunked.txt")["Body"].read() == b"hello chunked world"
    assert [(s.service, s.operation) for s in proxy.seen] == [("s3", "PutObject")]
