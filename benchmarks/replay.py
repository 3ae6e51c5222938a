"""`iotpipe replay failed` throughput on the embedded emulator, in readings per second.

    python benchmarks/replay.py [--readings 5000] [--batch-size 100]

Sets up the processing half of an env (kms, storage, stream, lambda) on a moto server in a
child process, publishes the readings, lets the local event source deliver them while every
DynamoDB write fails (so each batch exhausts its retries and lands, whole, as a failure record
under aws/lambda/), then times `replay failed` alone and checks that the table holds every
reading exactly once. Absolute speeds are the emulator's (one process, HTTP to moto), not AWS's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

REGION = "us-east-1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)

    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine
    from iotpipe.handler import index as handler_index
    from iotpipe.local.demo import DEMO_SETS, emulator_environment
    from iotpipe.local.emulator import emulator_process
    from iotpipe.local.simulator import (
        HandlerTotals,
        deliver,
        local_handler,
        make_readings,
        publish,
    )
    from iotpipe.ops.failure_records import list_failure_records
    from iotpipe.ops.replay import replay_failed
    from iotpipe.steps import kms, lambda_, storage, stream

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    os.environ.update(emulator_environment())

    def refuse(model, **_):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "bench"}},
                          model.name)

    with emulator_process() as emu, tempfile.TemporaryDirectory() as state:
        config = load_config("bench", region=REGION, assignments=(*DEMO_SETS,
                                                                  f"lambda.batch_size={args.batch_size}"))
        aws = AwsContext(REGION, endpoint_url=emu.url, sleep=lambda _s: None)
        engine = make_engine(config, aws, Path(state),
                             resources=(*kms.RESOURCES, *storage.RESOURCES, *stream.RESOURCES, *lambda_.RESOURCES))
        engine.up()
        ctx = engine.ctx
        publish(ctx, make_readings(args.readings))
        with local_handler(ctx, HandlerTotals(echo_errors=False), sleep=lambda _s: None) as handler:
            handler_index.client("dynamodb").meta.events.register("before-call.dynamodb.BatchWriteItem", refuse)
            delivery = deliver(ctx, handler, max_redeliveries=0)
        records = len(list_failure_records(ctx.client("s3"), ctx.names.sensor_bucket))
        started = time.perf_counter()
        report = replay_failed(ctx)
        seconds = time.perf_counter() - started
        items = ctx.client("dynamodb").describe_table(TableName=ctx.names.metrics_table)["Table"]["ItemCount"]
    totals = report.totals
    print(f"readings {args.readings:,}, {delivery.shards} shard(s), batches of up to {args.batch_size}: "
          f"{records} failure records")
    print(f"replay failed: {totals['stored']:,} readings stored in {seconds:.2f} s = "
          f"{totals['stored'] / seconds:,.0f} readings/s ({records / seconds:,.1f} failure records/s)")
    print(f"table items {items:,} (expected {args.readings:,}); failure records left "
          f"{totals['still_failing']}; complete: {report.complete}")
    return 0 if report.complete and items == args.readings else 1


if __name__ == "__main__":
    sys.exit(main())
