"""`iotpipe readings DEVICE`: a device's stored readings, newest ``limit`` in the window,
shown oldest first, anomalies marked.

One DynamoDB Query on the table's key (``device_id``, ``timestamp``), newest first with a
``Limit``, so the cost is the readings shown, whatever the device's history.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from iotpipe.aws import is_not_found
from iotpipe.errors import NotDeployedError
from iotpipe.handler.validate import METRICS
from iotpipe.steps.base import StepContext

CSV_COLUMNS = ("device_id", "timestamp", "time", *METRICS, "anomalies", "received_at", "sequence_number")


@dataclass
class Reading:
    device_id: str
    timestamp: float
    metrics: dict[str, float]
    anomalies: list[str]
    received_at: float | None
    sequence_number: str

    @property
    def time(self) -> str:
        when = datetime.fromtimestamp(self.timestamp, tz=UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".") + "Z"

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "timestamp": self.timestamp, "time": self.time,
                **{m: self.metrics.get(m) for m in METRICS}, "anomalies": self.anomalies,
                "anomalous": bool(self.anomalies), "received_at": self.received_at,
                "sequence_number": self.sequence_number}


def device_readings(ctx: StepContext, device_id: str, *, start: datetime | None, end: datetime | None,
                    limit: int) -> list[Reading]:
    table = ctx.names.metrics_table
    condition = "device_id = :d"
    values: dict[str, Any] = {":d": {"S": device_id}}
    if start is not None and end is not None:
        condition += " AND #t BETWEEN :s AND :e"
        values.update({":s": {"N": _n(start)}, ":e": {"N": _n(end)}})
    elif start is not None:
        condition += " AND #t >= :s"
        values[":s"] = {"N": _n(start)}
    elif end is not None:
        condition += " AND #t <= :e"
        values[":e"] = {"N": _n(end)}
    kwargs: dict[str, Any] = {"TableName": table, "KeyConditionExpression": condition,
                              "ExpressionAttributeValues": values, "ScanIndexForward": False, "Limit": limit}
    if ":s" in values or ":e" in values:
        kwargs["ExpressionAttributeNames"] = {"#t": "timestamp"}  # a reserved word in expressions
    dynamodb = ctx.client("dynamodb")
    items: list[dict[str, Any]] = []
    try:
        while len(items) < limit:
            page = dynamodb.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            kwargs["Limit"] = limit - len(items)
    except Exception as err:
        if is_not_found(err):
            raise NotDeployedError(f"table {table} does not exist: env {ctx.env!r} is not deployed "
                                   f"(run `iotpipe up --env {ctx.env}`)") from None
        raise
    return [_reading(item) for item in reversed(items[:limit])]


def to_csv(readings: list[Reading]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in readings:
        row = r.as_dict()
        writer.writerow(["" if row[c] is None else ";".join(row[c]) if c == "anomalies" else row[c]
                         for c in CSV_COLUMNS])
    return out.getvalue()


_DESERIALIZE = TypeDeserializer().deserialize


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return int(value) if isinstance(value, Decimal) and value == value.to_integral_value() else float(value)


def _reading(item: dict[str, Any]) -> Reading:
    plain = {k: _DESERIALIZE(v) for k, v in item.items()}
    return Reading(
        device_id=plain["device_id"],
        timestamp=_number(plain["timestamp"]),
        metrics={m: _number(plain[m]) for m in METRICS if m in plain},
        anomalies=list(plain.get("anomalies") or []),
        received_at=_number(plain.get("received_at")),
        sequence_number=str(plain.get("sequence_number", "")),
    )


def _n(when: datetime) -> str:
    return f"{Decimal(str(when.timestamp())):f}"
