"""Write tests/data/botocore-<version>-params.json from a botocore wheel (run by hand).

    python3 -m pip download --no-deps botocore==1.35.32 -d /tmp/bc
    python3 -m tests.data.make_botocore_params /tmp/bc/botocore-1.35.32-py3-none-any.whl

For each operation iotpipe calls (OPERATIONS, from tests/test_dependency_floor.py's call log),
the input parameter paths that version's service model accepts. The test checks every
parameter iotpipe sends against this file, so the declared botocore floor is known to have
them all; keeping only the operations used keeps the file small.
"""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.botocore_params import model_paths
from tests.test_dependency_floor import OPERATIONS


def main(wheel: str) -> None:
    version = Path(wheel).name.split("-")[1]
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        sys.path.insert(0, tmp)
        for name in [m for m in sys.modules if m == "botocore" or m.startswith("botocore.")]:
            del sys.modules[name]
        import botocore.session

        assert botocore.__version__ == version, botocore.__file__
        session = botocore.session.get_session()
        out: dict[str, dict[str, list[str]]] = {}
        for service, operation in sorted(OPERATIONS):
            model = session.get_service_model(service)
            shape = model.operation_model(operation).input_shape
            out.setdefault(service, {})[operation] = sorted(model_paths(shape))
    target = Path(__file__).parent / f"botocore-{version}-params.json"
    target.write_text(json.dumps({"botocore": version, "operations": out}, indent=1, sort_keys=True) + "\n")
    print(target)


if __name__ == "__main__":
    main(sys.argv[1])
