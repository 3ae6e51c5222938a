"""Partial failures: the reported sequence number, then Lambda's re-delivery, must leave every
valid reading stored exactly once and every record archived exactly once."""

from __future__ import annotations

import pytest

from iotpipe.handler import index


def readings(stream, n: int, device: str = "dev") -> list[dict]:
    return [stream.reading(f"{device}-{i}", 1_700_000_000 + i, temperature=i) for i in range(n)]


def assert_exactly_once(aws, stream, event: dict, invalid: set[str] = frozenset()) -> None:
    """Every record of ``event`` archived once (raw or rejected), every valid one in the table."""
    raw = [line["sequence_number"] for line in aws.lines("raw/")]
    rejected = [line["sequence_number"] for line in aws.lines("rejected/")]
    archived = raw + rejected
    assert len(archived) == len(set(archived)), "a record is archived twice"
    assert set(rejected) == invalid
    assert set(raw) == {stream.seq(r) for r in event["Records"]} - invalid
    keys = {(line["device_id"], line["timestamp"]) for line in aws.lines("raw/")}
    assert set(aws.items()) == keys  # aws.items() itself fails on a duplicate item


def test_dynamodb_error_reports_the_first_record_of_the_failed_request(aws, stream, invoke):
    event = stream.event(*readings(stream, 60))  # requests of 25, 25, 10
    seqs = [stream.seq(r) for r in event["Records"]]
    remove = aws.fail_call(aws.dynamodb, "BatchWriteItem", nth=2)

    result = invoke(event)

    assert result == {"batchItemFailures": [{"itemIdentifier": seqs[25]}]}
    assert aws.calls.count("BatchWriteItem") == 2  # stops at the failure: the rest is retried
    assert len(aws.items()) == 25
    assert [line["sequence_number"] for line in aws.lines("raw/")] == seqs[:25]

    remove()
    assert invoke(stream.redeliver(event, result)) == {"batchItemFailures": []}

    assert len(aws.objects("raw/")) == 2
    assert_exactly_once(aws, stream, event)


def test_dynamodb_error_on_the_first_request_writes_nothing_to_s3(aws, stream, invoke):
    event = stream.event(*readings(stream, 10))
    aws.fail_call(
        aws.dynamodb, "BatchWriteItem", nth=1, code="ProvisionedThroughputExceededException"
    )

    result = invoke(event)

    assert result == {"batchItemFailures": [{"itemIdentifier": stream.seq(event["Records"][0])}]}
    assert "PutObject" not in aws.calls


def test_mixed_batch_with_duplicates_and_bad_records_converges_after_redelivery(
    aws, stream, invoke
):
    payloads = []
    for i in range(80):
        if i % 10 == 3:
            payloads.append({"device_id": f"bad-{i}", "timestamp": "soon", "temperature": 1})
        elif i == 50:  # same key as record 5, new value: must win
            payloads.append(stream.reading("dev-5", 1_700_000_005, temperature=555))
        else:
            payloads.append(stream.reading(f"dev-{i}", 1_700_000_000 + i, temperature=i))
    event = stream.event(*payloads)
    invalid = {stream.seq(r) for i, r in enumerate(event["Records"]) if i % 10 == 3}
    remove = aws.fail_call(aws.dynamodb, "BatchWriteItem", nth=2)

    result = invoke(event)

    (failure,) = result["batchItemFailures"]
    failed_at = [stream.seq(r) for r in event["Records"]].index(failure["itemIdentifier"])
    # everything before the reported record is persisted: in the table or quarantined
    stored = aws.items()
    for i, payload in enumerate(payloads[:failed_at]):
        if i % 10 != 3:
            assert (payload["device_id"], payload["timestamp"]) in stored
    assert (payloads[failed_at]["device_id"], payloads[failed_at]["timestamp"]) not in stored
    archived = {line["sequence_number"] for line in aws.lines("")}
    assert archived == {stream.seq(r) for r in event["Records"][:failed_at]}

    remove()
    assert invoke(stream.redeliver(event, result)) == {"batchItemFailures": []}

    assert_exactly_once(aws, stream, event, invalid)
    assert aws.items()[("dev-5", 1_700_000_005)]["temperature"] == 555


def test_unprocessed_items_are_retried_with_backoff(aws, stream, invoke):
    event = stream.event(*readings(stream, 30))
    aws.withhold_items(lambda item: item["device_id"]["S"] in ("dev-3", "dev-7", "dev-29"), times=2)

    assert invoke(event) == {"batchItemFailures": []}

    assert len(aws.items()) == 30
    # chunk 1: 1 call + 2 retries of its two withheld items; chunk 2: 1 call + 2 retries
    assert aws.calls.count("BatchWriteItem") == 6
    assert aws.batch_sizes == [25, 2, 2, 5, 1, 1]
    assert len(aws.sleeps) == 4
    assert all(0 < s <= 1.0 for s in aws.sleeps)


def test_items_still_unprocessed_after_bounded_retries_fail_from_their_record(aws, stream, invoke):
    event = stream.event(*readings(stream, 40))
    seqs = [stream.seq(r) for r in event["Records"]]
    remove = aws.withhold_items(lambda item: item["device_id"]["S"] in ("dev-12", "dev-20"))

    result = invoke(event)

    assert result == {"batchItemFailures": [{"itemIdentifier": seqs[12]}]}
    assert aws.calls.count("BatchWriteItem") == index.WRITE_ATTEMPTS
    assert sum(aws.sleeps) <= 5  # bounded: the Lambda timeout is 60 s
    assert len(aws.items()) == 23  # 0..24 minus the two withheld
    assert [line["sequence_number"] for line in aws.lines("raw/")] == seqs[:12]

    remove()
    assert invoke(stream.redeliver(event, result)) == {"batchItemFailures": []}

    assert_exactly_once(aws, stream, event)


def test_s3_failure_reports_the_first_record_and_redelivery_archives_once(aws, stream, invoke):
    event = stream.event(*readings(stream, 30))
    remove = aws.fail_call(aws.s3, "PutObject", nth=1, code="SlowDown")

    result = invoke(event)

    assert result == {"batchItemFailures": [{"itemIdentifier": stream.seq(event["Records"][0])}]}
    assert aws.objects("") == {}

    remove()
    assert invoke(stream.redeliver(event, result)) == {"batchItemFailures": []}

    assert len(aws.objects("raw/")) == 1
    assert_exactly_once(aws, stream, event)


@pytest.mark.parametrize("more", [0, 7])
def test_rejected_object_failure_after_the_raw_object_is_rewritten_not_duplicated(
    aws, stream, invoke, more
):
    """The raw object exists when the rejected one fails; the retry starts at the same record,
    so it overwrites the same key — even when Lambda re-delivers a longer batch."""
    event = stream.event(*readings(stream, 10), "junk", *readings(stream, 5, "late"))
    invalid = {stream.seq(event["Records"][10])}
    remove = aws.fail_call(aws.s3, "PutObject", nth=2)

    result = invoke(event)

    assert result == {"batchItemFailures": [{"itemIdentifier": stream.seq(event["Records"][0])}]}
    assert len(aws.objects("raw/")) == 1 and aws.objects("rejected/") == {}

    remove()
    redelivered = stream.redeliver(event, result)
    redelivered["Records"] += [stream.record(p) for p in readings(stream, more, "new")]
    assert invoke(redelivered) == {"batchItemFailures": []}

    assert len(aws.objects("raw/")) == 1
    assert_exactly_once(aws, stream, redelivered, invalid)


def test_anomalies_are_logged_only_once_their_reading_is_persisted(aws, stream, invoke, capsys):
    event = stream.event(stream.reading("hot", temperature=150))
    remove = aws.fail_call(aws.s3, "PutObject")

    result = invoke(event)
    first = capsys.readouterr().out
    remove()
    invoke(stream.redeliver(event, result))
    second = capsys.readouterr().out

    assert '"event":"anomaly"' not in first
    assert '"event":"archive_write_failed"' in first
    assert second.count('"event":"anomaly"') == 1
