"""`iotpipe device import` at plant scale, against a local moto server.

    python benchmarks/devices.py [--devices 1000] [--workers 8] [--paced] [--interrupt 500]

1. Emulator throughput: DEVICES devices imported over real HTTP with pacing off (every IoT
   call still counted), in devices per second: the emulator's speed, not AWS's.
2. AWS's bound: the least time AWS's documented per-API rates (iotpipe.ratelimit.IOT_API_RATES,
   from the AWS IoT Core endpoints-and-quotas page) allow for the calls that run made: each
   API at most at its rate, APIs in parallel, so the slowest API decides.
3. Under a model of those limits: the calls each worker thread made in run 1, in its order,
   replayed through iotpipe's own token buckets at AWS's rates on a simulated clock, each call
   taking LATENCY seconds (AWS's answer time), the threads' calls taken in time order. The
   modelled time against the bound is the pacing's efficiency (target: within 1.2x).
4. ``--paced``: the same import for real against the emulator, paced at AWS's rates in real
   time (it takes at least the bound: about 100 s for 1,000 devices).
5. ``--interrupt N``: a file of N devices with a few bad lines imported by the CLI
   (``--skip-invalid``) in a subprocess, SIGKILLed once about half the keys are written,
   imported again; then things, certificates, policy attachments and key files counted
   independently (boto3, the file system).
"""

from __future__ import annotations

import argparse
import heapq
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from iotpipe import device_import as di  # noqa: E402
from iotpipe.ratelimit import IOT_API_RATES, RateLimiter, minimum_seconds  # noqa: E402

REGION = "us-east-1"
ENV = "bench"
SETS = ("storage.enforce_tls=false",)


def start_emulator() -> tuple[object, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.disable(logging.ERROR)  # the server logs every request, and the probes of calls it lacks
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    return server, url


def engine_for(url: str, state_dir: Path, recorder=None):
    from iotpipe.aws import AwsContext
    from iotpipe.config import load_config
    from iotpipe.engine import make_engine
    from iotpipe.steps import iot, kms

    config = load_config(ENV, region=REGION, assignments=SETS)
    aws = AwsContext(REGION, endpoint_url=url)
    if recorder is not None:
        aws.events.register("before-call.iot.*", recorder)
    return make_engine(config, aws, state_dir, resources=kms.RESOURCES + iot.RESOURCES)


def rows_of(n: int, prefix: str = "sensor") -> list[di.DeviceRow]:
    return [di.DeviceRow(i + 2, f"{prefix}-{i:05d}", {"location": f"hall-{i % 7}", "facility": "plant-a",
                                                      "equipment_type": "press"}) for i in range(n)]


class ThreadCalls:
    """Every IoT call, in order, per thread: the workload the model replays."""

    def __init__(self) -> None:
        self.by_thread: dict[int, list[str]] = defaultdict(list)

    def __call__(self, model, **_) -> None:
        self.by_thread[threading.get_ident()].append(model.name)


def simulate(sequences: list[list[str]], latency: float) -> float:
    """Model seconds for worker threads making these calls in this order, paced by
    iotpipe's own buckets (RateLimiter's defaults), each call answered after ``latency`` seconds.

    A discrete-event simulation: the earliest pending call goes next, so every bucket sees
    time move forward as it would on a real clock."""
    now = [0.0]
    buckets = RateLimiter(clock=lambda: now[0], sleep=lambda _s: None).buckets
    heap = [(0.0, i, 0) for i, seq in enumerate(sequences) if seq]
    heapq.heapify(heap)
    end = 0.0
    while heap:
        at, thread, position = heapq.heappop(heap)
        now[0] = at
        op = sequences[thread][position]
        wait = buckets[op].take() if op in buckets else 0.0
        done = at + wait + latency
        end = max(end, done)
        if position + 1 < len(sequences[thread]):
            heapq.heappush(heap, (done, thread, position + 1))
    return end


def emulator_run(url: str, n: int, workers: int) -> tuple[float, Counter, list[list[str]]]:
    state = Path(tempfile.mkdtemp(prefix="iotpipe-bench-"))
    engine_for(url, state).up()
    calls = ThreadCalls()
    engine = engine_for(url, state, recorder=calls)
    limiter = RateLimiter(scale=1e9)  # counts every call, never waits
    started = time.perf_counter()
    result = di.import_devices(engine, rows_of(n), limiter=limiter, workers=workers)
    seconds = time.perf_counter() - started
    assert result.counts() == {"added": n}, result.counts()
    return seconds, Counter({op: c for op, c in limiter.calls.items() if c}), list(calls.by_thread.values())


def paced_run(url: str, n: int, workers: int) -> float:
    state = Path(tempfile.mkdtemp(prefix="iotpipe-bench-"))
    engine = engine_for(url, state)
    started = time.perf_counter()
    result = di.import_devices(engine, rows_of(n, "paced"), limiter=RateLimiter(), workers=workers)
    assert result.counts() == {"added": n}, result.counts()
    return time.perf_counter() - started


def interrupt_run(url: str, n: int) -> dict[str, object]:
    """The CLI killed halfway (SIGKILL) and run again; everything counted independently."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    state = Path(tempfile.mkdtemp(prefix="iotpipe-bench-kill-"))
    engine_for(url, state).up()
    ids = [f"kill-{i:05d}" for i in range(n)]
    lines = ["id,location,facility,equipment_type"] + [f"{d},hall-1,plant-a,press" for d in ids]
    lines[n // 3] = lines[n // 3].replace("hall-1", "hall 1")  # a few bad lines
    lines.insert(n // 2, "kill-00001,hall-2,plant-a,press")
    lines.insert(2 * n // 3, "bad/id,hall-1,plant-a,press")
    bad_id = lines[n // 3].split(",")[0]
    good = [d for d in ids if d != bad_id]
    path = state / "plant.csv"
    path.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "iotpipe", "device", "import", str(path), "--env", ENV, "--region", REGION,
           "--endpoint-url", url, "--state-dir", str(state), "--skip-invalid",
           *[a for s in SETS for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    keys = state / "devices" / ENV
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while first.poll() is None and len(list(keys.glob("*/private.pem.key"))) < len(good) // 2:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written_at_kill = len(list(keys.glob("*/private.pem.key")))
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)

    iot = boto3.client("iot", region_name=REGION, endpoint_url=url)
    things = [t["thingName"] for page in iot.get_paginator("list_things").paginate(
        thingTypeName=f"manufacturing-sensor-{ENV}") for t in page["things"]]
    certs = [c for page in iot.get_paginator("list_certificates").paginate() for c in page["certificates"]]
    per_thing, with_policy = Counter(), 0
    for thing in things:
        principals = iot.list_thing_principals(thingName=thing)["principals"]
        per_thing[len(principals)] += 1
        for arn in principals:
            if iot.list_attached_policies(target=arn)["policies"]:
                with_policy += 1
    key_files = list(keys.glob("kill-*/private.pem.key"))
    return {
        "devices in file": n, "valid rows": len(good), "keys written when killed": written_at_kill,
        "re-run exit code": second.returncode, "things": len(things),
        "things with exactly one certificate": per_thing[1],
        "certificates ACTIVE": sum(c["status"] == "ACTIVE" for c in certs),
        "certificates INACTIVE (answers lost to the kill)": sum(c["status"] == "INACTIVE" for c in certs),
        "attached certificates carrying the policy": with_policy, "key files": len(key_files),
        "key files mode 0600": sum(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in key_files),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=di.DEFAULT_WORKERS)
    parser.add_argument("--latency", type=float, nargs="*", default=[0.0, 0.05, 0.1],
                        help="AWS answer times (seconds) to model")
    parser.add_argument("--paced", action="store_true", help="also run paced at AWS's rates in real time")
    parser.add_argument("--interrupt", type=int, default=0, metavar="N",
                        help="also kill a CLI import of N devices halfway and re-run it")
    args = parser.parse_args()

    server, url = start_emulator()
    try:
        seconds, calls, sequences = emulator_run(url, args.devices, args.workers)
        print(f"emulator: {args.devices:,} devices in {seconds:.1f} s = {args.devices / seconds:.1f} devices/s "
              f"({args.workers} threads, pacing off, moto server over HTTP)")
        bound = minimum_seconds(calls)
        slowest = max((op for op in calls if op in IOT_API_RATES), key=lambda op: calls[op] / IOT_API_RATES[op])
        print(f"AWS's documented rates allow it in no less than {bound:.1f} s "
              f"({args.devices / bound:.1f} devices/s; decided by {slowest} at "
              f"{IOT_API_RATES[slowest]:g}/s)")
        print("calls: " + ", ".join(f"{op} {n}" for op, n in sorted(calls.items())))
        for latency in args.latency:
            modelled = simulate(sequences, latency)
            print(f"model, {latency * 1000:.0f} ms per call: {modelled:.1f} s = {modelled / bound:.3f}x the bound "
                  f"({'within' if modelled <= 1.2 * bound else 'OUTSIDE'} 1.2x)")
        if args.paced:
            real = paced_run(url, args.devices, args.workers)
            print(f"paced for real on the emulator: {real:.1f} s = {real / bound:.3f}x the bound")
        if args.interrupt:
            for key, value in interrupt_run(url, args.interrupt).items():
                print(f"interrupt: {key}: {value}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
