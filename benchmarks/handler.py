"""Seed handler vs iotpipe handler, on the same readings, against a local moto server.

    python benchmarks/handler.py [--readings 10000] [--batch-size 100] [--cost]

Why a server and not ``mock_aws``: requests then go over real HTTP with real botocore
serialisation, so request counts and the per-request overhead that batching saves are real.
Absolute speeds are the emulator's, not AWS's; the ratio is the point.

(a) "seed": the seed's approach rewritten for this benchmark — one PutItem and one PutObject
    per reading, batches of ``--batch-size`` records as the event source mapping delivers them.
(b) "iotpipe": ``iotpipe.handler.index.lambda_handler`` on the same batches.

Every AWS request is counted with a botocore ``before-call`` hook; only the processing loop is
timed (not server start-up or resource creation).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

REGION = "us-east-1"
WRITE_OPERATIONS = {"PutItem", "BatchWriteItem", "PutObject"}
ARRIVAL = 1_700_000_000.0

# Public on-demand prices, us-east-1, as published in 2025 (check before quoting).
PRICES = {
    "dynamodb_per_million_wru": 0.625,  # on-demand write request units; 1 WRU per item ≤ 1 KB
    "s3_put_per_thousand": 0.005,  # S3 Standard PUT/COPY/POST/LIST
    "kms_per_ten_thousand": 0.03,  # GenerateDataKey for SSE-KMS
    "lambda_per_million_requests": 0.20,
    "lambda_arm64_per_gb_second": 0.0000133334,  # the lambda step deploys arm64
}
LAMBDA_MEMORY_GB = 0.25  # 256 MB, the config default
# Lambda duration is not measurable on an emulator; assumed in-region AWS latencies:
ASSUMED_MS = {"PutItem": 8.0, "BatchWriteItem": 25.0, "PutObject": 30.0}


@dataclass
class Run:
    name: str
    readings: int
    seconds: float
    calls: dict[str, int]

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.calls.items() if op in WRITE_OPERATIONS)

    @property
    def writes_per_1000(self) -> float:
        return self.writes * 1000 / self.readings

    @property
    def per_second(self) -> float:
        return self.readings / self.seconds


# ----------------------------------------------------------------------------- set-up


def start_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port  # port 0: the OS picked a free one
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    os.environ.pop("AWS_PROFILE", None)
    return server


def _counter(calls: dict[str, int]):
    def count(model, **_):
        calls[model.name] = calls.get(model.name, 0) + 1

    return count


def create_resources(name: str) -> tuple[str, str]:
    table, bucket = f"sensor-metrics-{name}", f"iot-sensor-data-{name}-123456789012"
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "device_id", "KeyType": "HASH"},
            {"AttributeName": "timestamp", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "device_id", "AttributeType": "S"},
            {"AttributeName": "timestamp", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=bucket)
    return table, bucket


def make_batches(count: int, batch_size: int) -> list[dict]:
    """Lambda-shaped Kinesis events; 50 devices, one reading per device per second."""
    rng = random.Random(42)
    records = []
    for i in range(count):
        payload = {
            "device_id": f"sensor-{i % 50:03d}",
            "timestamp": 1_700_000_000 + i // 50,
            "temperature": round(rng.gauss(70, 15), 2),
            "vibration": round(abs(rng.gauss(20, 12)), 2),
            "pressure": round(rng.gauss(101.3, 2), 2),
        }
        seq = str(49_590_000_000_000_000_000_000 + i)
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": payload["device_id"],
                    "sequenceNumber": seq,
                    "data": base64.b64encode(json.dumps(payload).encode()).decode(),
                    "approximateArrivalTimestamp": ARRIVAL + i / 1000,
                },
                "eventSource": "aws:kinesis",
                "eventID": f"shardId-000000000000:{seq}",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/bench",
            }
        )
    return [{"Records": records[i : i + batch_size]} for i in range(0, count, batch_size)]


def stored_items(table: str) -> int:
    paginator = boto3.client("dynamodb", region_name=REGION).get_paginator("scan")
    return sum(p["Count"] for p in paginator.paginate(TableName=table, Select="COUNT"))


# ----------------------------------------------------------------------------- the two approaches


def run_seed(batches: list[dict], readings: int) -> Run:
    """The seed's per-record loop (its 0-dropping and local-time bugs fixed: same cost)."""
    table_name, bucket = create_resources("seed")
    calls: dict[str, int] = {}
    dynamodb = boto3.resource("dynamodb", region_name=REGION)
    dynamodb.meta.client.meta.events.register("before-call.*.*", _counter(calls))
    s3 = boto3.client("s3", region_name=REGION)
    s3.meta.events.register("before-call.*.*", _counter(calls))
    table = dynamodb.Table(table_name)

    started = time.perf_counter()
    for event in batches:
        for record in event["Records"]:
            data = json.loads(base64.b64decode(record["kinesis"]["data"]))
            item = {
                "device_id": data["device_id"],
                "timestamp": Decimal(str(data["timestamp"])),
                **{m: Decimal(str(data[m])) for m in ("temperature", "vibration", "pressure")},
            }
            table.put_item(Item=item)
            day = datetime.fromtimestamp(data["timestamp"], tz=UTC).strftime("%Y/%m/%d")
            s3.put_object(
                Bucket=bucket,
                Key=f"raw-data/{data['device_id']}/{day}/{data['timestamp']}.json",
                Body=json.dumps(data),
                ContentType="application/json",
            )
    seconds = time.perf_counter() - started
    assert stored_items(table_name) == readings, "seed run lost readings"
    return Run("seed (PutItem + PutObject per reading)", readings, seconds, calls)


def run_iotpipe(batches: list[dict], readings: int) -> Run:
    from iotpipe.handler import index

    table, bucket = create_resources("iotpipe")
    os.environ.update(DYNAMODB_TABLE=table, S3_BUCKET=bucket, ENVIRONMENT_SUFFIX="bench")
    os.environ["LOG_LEVEL"] = "ERROR"  # the benchmark measures writes, not stdout
    calls: dict[str, int] = {}
    index.reset()  # the handler's own clients, with its own botocore config
    for service in ("dynamodb", "s3"):
        index.client(service).meta.events.register("before-call.*.*", _counter(calls))

    started = time.perf_counter()
    for event in batches:
        result = index.lambda_handler(event, None)
        assert result == {"batchItemFailures": []}, result
    seconds = time.perf_counter() - started
    assert stored_items(table) == readings, "iotpipe run lost readings"
    return Run("iotpipe (BatchWriteItem + 1 archive/batch)", readings, seconds, calls)


# ----------------------------------------------------------------------------- report


def print_comparison(seed: Run, ours: Run, batch_size: int) -> None:
    print(f"\n{seed.readings:,} readings in batches of {batch_size}, moto server on 127.0.0.1\n")
    width = 44
    print(f"{'':{width}} {'AWS writes/1k':>14} {'readings/s':>11} {'seconds':>8}  requests")
    for run in (seed, ours):
        requests = ", ".join(f"{op} {n:,}" for op, n in sorted(run.calls.items()))
        print(
            f"{run.name:{width}} {run.writes_per_1000:>14.1f} {run.per_second:>11,.0f}"
            f" {run.seconds:>8.2f}  {requests}"
        )
    print(
        f"\nwrite requests: {seed.writes_per_1000 / ours.writes_per_1000:.0f}x fewer"
        f" (target ≤ 50 per 1,000: {'met' if ours.writes_per_1000 <= 50 else 'MISSED'});"
        f" throughput: {ours.per_second / seed.per_second:.1f}x the seed's"
        f" (target ≥ 10x: {'met' if ours.per_second >= 10 * seed.per_second else 'MISSED'})"
    )


def cost_per_million(run: Run, batch_size: int, bucket_key: bool) -> dict[str, float]:
    scale = 1_000_000 / run.readings
    puts = run.calls.get("PutObject", 0) * scale
    invocations = 1_000_000 / batch_size
    duration_s = sum(ASSUMED_MS.get(op, 0) * n for op, n in run.calls.items()) / 1000 * scale
    return {
        # billed per item written, however the items are grouped: batching does not change it
        "DynamoDB writes": 1_000_000 * PRICES["dynamodb_per_million_wru"] / 1_000_000,
        "S3 PUT": puts * PRICES["s3_put_per_thousand"] / 1000,
        "KMS": 0.0 if bucket_key else puts * PRICES["kms_per_ten_thousand"] / 10_000,
        "Lambda requests": invocations * PRICES["lambda_per_million_requests"] / 1_000_000,
        "Lambda GB-s": duration_s * LAMBDA_MEMORY_GB * PRICES["lambda_arm64_per_gb_second"],
    }


def print_cost(seed: Run, ours: Run, batch_size: int) -> None:
    print("\n$ per million readings (us-east-1 on-demand prices):")
    print(
        "  DynamoDB $0.625 per million WRU (1 WRU per item ≤ 1 KB; BatchWriteItem is billed per"
        " item, so batching saves requests, not WRUs)\n"
        "  S3 PUT $0.005 per 1,000; KMS $0.03 per 10,000 requests (one GenerateDataKey per PUT"
        " without an S3 bucket key; with it, KMS calls become negligible)\n"
        f"  Lambda $0.20 per million requests + $0.0000133334 per GB-s (arm64, 256 MB);"
        f" one invocation per {batch_size} readings; duration estimated from assumed in-region"
        f" latencies {ASSUMED_MS} ms"
    )
    for bucket_key in (False, True):
        label = "with S3 bucket key (iotpipe's bucket)" if bucket_key else "without bucket key"
        print(f"\n  {label}:")
        costs = {r.name: cost_per_million(r, batch_size, bucket_key) for r in (seed, ours)}
        names = list(next(iter(costs.values())))
        print(f"  {'':18}" + "".join(f"{r.name.split(' ')[0]:>12}" for r in (seed, ours)))
        for name in [*names, "total"]:
            values = [sum(c.values()) if name == "total" else c[name] for c in costs.values()]
            print(f"  {name:18}" + "".join(f"{v:>12.4f}" for v in values))
    print(
        "\n  Not included: S3/DynamoDB storage, CloudWatch Logs ingestion ($0.50/GB: iotpipe logs"
        " one summary line per batch), Kinesis, data transfer."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--cost", action="store_true", help="print $ per million readings")
    args = parser.parse_args(argv)

    server = start_server()
    try:
        batches = make_batches(args.readings, args.batch_size)
        seed = run_seed(batches, args.readings)
        ours = run_iotpipe(batches, args.readings)
    finally:
        server.stop()
    print_comparison(seed, ours, args.batch_size)
    if args.cost:
        print_cost(seed, ours, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
