"""The handler ships alone: ``index.py`` and its siblings at the zip root, with only the
standard library and boto3 (which the Lambda runtime provides) to import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import iotpipe.handler

HANDLER_DIR = Path(iotpipe.handler.__file__).parent
# boto3 and what it pulls in; everything else must come from the standard library
BOTO3_CLOSURE = {
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "dateutil",
    "urllib3",
    "six",
    "certifi",
}

PROBE = """
import json, sys
sys.path.insert(0, ".")
import index
top = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"top": top, "stdlib": sorted(sys.stdlib_module_names)}))
"""


def test_index_imports_as_a_top_level_module_with_only_stdlib_and_boto3(tmp_path):
    for source in HANDLER_DIR.glob("*.py"):
        if source.name != "__init__.py":
            shutil.copy(source, tmp_path / source.name)

    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE], cwd=tmp_path, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ours = {p.stem for p in tmp_path.glob("*.py")}
    foreign = set(report["top"]) - set(report["stdlib"]) - BOTO3_CLOSURE - ours
    assert not {m for m in foreign if not m.startswith("_")}, foreign
    assert "iotpipe" not in report["top"]
