"""What `iotpipe demo` does between `up` and `destroy`: push readings through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from iotpipe.local.simulator import deliver, local_handler, make_readings, publish
from iotpipe.steps.base import StepContext, paginate

INVALID_PAYLOADS: list[bytes | dict] = [
    b"not json at all",
    {"device_id": "", "timestamp": 1700000000, "temperature": 20},
    {"device_id": "press-009", "timestamp": "yesterday", "temperature": 20},
]


@dataclass
class DemoReport:
    readings_sent: int
    invalid_sent: int
    batches: int
    redeliveries: int
    undelivered: int
    items_stored: int
    anomalous_items: int
    archive_objects: int
    rejected_objects: int


def exercise(ctx: StepContext, count: int = 1000) -> DemoReport:
    """Publish ``count`` readings plus a few invalid ones, run the handler, count what landed."""
    readings = make_readings(count)
    publish(ctx, [*readings, *INVALID_PAYLOADS])
    with local_handler(ctx) as handler:
        delivery = deliver(ctx, handler)
    dynamodb, s3 = ctx.client("dynamodb"), ctx.client("s3")
    table = ctx.names.metrics_table
    stored = sum(p["Count"] for p in dynamodb.get_paginator("scan").paginate(TableName=table, Select="COUNT"))
    anomalous = sum(p["Count"] for p in dynamodb.get_paginator("scan").paginate(
        TableName=table, Select="COUNT", FilterExpression="attribute_exists(anomalies)"))
    return DemoReport(
        readings_sent=len(readings),
        invalid_sent=len(INVALID_PAYLOADS),
        batches=delivery.batches,
        redeliveries=delivery.redeliveries,
        undelivered=len(delivery.failures),
        items_stored=stored,
        anomalous_items=anomalous,
        archive_objects=len(paginate(s3, "list_objects_v2", "Contents", Bucket=ctx.names.sensor_bucket, Prefix="raw/")),
        rejected_objects=len(paginate(s3, "list_objects_v2", "Contents", Bucket=ctx.names.sensor_bucket, Prefix="rejected/")),
    )
