"""The shipped zip imports and processes a batch under every Python runtime the config accepts.

Lambda runs ``index.lambda_handler`` from the zip root with the runtime's own interpreter and
boto3; a newer-only API (``datetime.UTC``, ``logging.getLevelNamesMapping``) passes every other
test here, which run on the development interpreter. So each accepted runtime's interpreter
(from pyenv, or ``pythonX.Y`` on PATH) imports the zip exactly as built by
``iotpipe.package.build_handler_zip`` and runs a small batch through it. boto3 and botocore are
replaced by stubs that record the writes: the runtime provides them, and what is tested here is
the handler's own code under that interpreter.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from iotpipe.config import LAMBDA_RUNTIMES
from iotpipe.package import build_handler_zip

STUBS = {
    "boto3/__init__.py": "def client(*args, **kwargs):\n    raise RuntimeError('no AWS here')\n",
    "botocore/__init__.py": "",
    "botocore/config.py": "class Config:\n    def __init__(self, **kwargs):\n        self.kwargs = kwargs\n",
    "botocore/exceptions.py": textwrap.dedent("""\
        class BotoCoreError(Exception):
            pass


        class ClientError(Exception):
            def __init__(self, response, operation_name):
                super().__init__(operation_name)
                self.response = response
    """),
}

RUNNER = textwrap.dedent("""\
    import base64, gzip, json, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]  # the zip (zipimport), then the stubs
    import index

    class Ddb:
        items = []
        def batch_write_item(self, RequestItems):
            for requests in RequestItems.values():
                self.items.extend(r["PutRequest"]["Item"] for r in requests)
            return {"UnprocessedItems": {}}

    class S3:
        keys = []
        def put_object(self, **kwargs):
            gzip.decompress(kwargs["Body"])
            self.keys.append(kwargs["Key"])
            return {}

    ddb, s3 = Ddb(), S3()
    index.configure(dynamodb=ddb, s3=s3, sleep=lambda _s: None)

    def record(n, payload):
        return {"kinesis": {"partitionKey": "p", "sequenceNumber": str(1000 + n),
                            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
                            "approximateArrivalTimestamp": 1700000000.25},
                "eventID": "shardId-000000000000:%d" % (1000 + n),
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/s"}

    event = {"Records": [
        record(0, {"device_id": "press-1", "timestamp": "2024-05-01T10:00:00Z", "temperature": 120}),
        record(1, {"device_id": "press-1", "timestamp": 1714557601000, "vibration": 0}),
        record(2, {"device_id": "press-2", "timestamp": "not a time", "temperature": 1}),
    ]}
    result = index.lambda_handler(event, None)
    print(json.dumps({"result": result, "items": len(ddb.items), "keys": sorted(s3.keys),
                      "anomalies": [i.get("anomalies") for i in ddb.items],
                      "timestamps": [i["timestamp"] for i in ddb.items],
                      "version": list(sys.version_info[:2])}))
""")


def interpreter(version: str) -> str | None:
    """An interpreter of ``version`` ("3.12"): pyenv's, else one on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for found in sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin" / "python"))):
        return found
    return shutil.which(f"python{version}")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runtime")
    package = root / "handler.zip"
    package.write_bytes(build_handler_zip())
    stubs = root / "stubs"
    for name, text in STUBS.items():
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).write_text(text)
    runner = root / "run.py"
    runner.write_text(RUNNER)
    return package, stubs, runner


def run(python: str, shipped: tuple[Path, Path, Path]) -> subprocess.CompletedProcess:
    package, stubs, runner = shipped
    env = {"PATH": os.environ.get("PATH", ""), "DYNAMODB_TABLE": "t", "S3_BUCKET": "b",
           "ENVIRONMENT_SUFFIX": "test", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([python, "-I", str(runner), str(package), str(stubs)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("runtime", LAMBDA_RUNTIMES)
def test_the_zip_runs_a_batch_under_every_accepted_runtime(runtime, shipped):
    version = runtime.removeprefix("python")
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter installed here (pyenv or PATH)")
    done = run(python, shipped)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["version"] == [int(p) for p in version.split(".")]
    assert out["result"] == {"batchItemFailures": []}
    assert out["items"] == 2  # the third record is quarantined, not stored
    assert out["timestamps"] == [{"N": "1714557600"}, {"N": "1714557601"}]  # ISO with Z, and ms
    assert out["anomalies"] == [{"L": [{"S": "temperature_high"}]}, None]
    assert [k.split("/")[0] for k in out["keys"]] == ["raw", "rejected"]


def test_python_3_10_is_refused_because_the_handler_cannot_run_there(shipped):
    """Why the config stops at 3.11: under 3.10 the zip does not even import."""
    assert "python3.10" not in LAMBDA_RUNTIMES
    python = interpreter("3.10")
    if python is None:
        pytest.skip("no Python 3.10 interpreter installed here")
    done = run(python, shipped)
    assert done.returncode != 0 and "ImportError" in done.stderr
