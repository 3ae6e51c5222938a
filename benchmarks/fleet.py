"""`iotpipe fleet status` over N envs against one env's `iotpipe status`, on the emulator.

    python benchmarks/fleet.py [--envs 10] [--repeat 3] [--concurrency 4]

The emulator (moto) runs in its own process; both commands run as the real CLI, with the state
of every env in one S3 state bucket, as a team with one env per plant would. Setup (bootstrap,
`fleet up`) is not timed; each measurement is the median wall time of ``--repeat`` runs,
process start-up included (an operator waits for that too). The target is a fleet status at
most 2x one env's status: the envs run side by side in worker processes, so the fleet costs one
start-up plus each env's CPU spread over the cores (the emulator's single process shares them).
Absolute times are the emulator's and this machine's, not AWS's; the ratio is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

STATE = "s3://iotpipe-bench-state/plants"
REGIONS = ("us-east-1", "eu-west-1")
# trail off: CloudTrail allows 5 trails per region; TLS policy off: the emulator denies object calls under it
CONFIG = "[storage]\nenforce_tls = false\n\n[trail]\nenabled = false\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    from iotpipe.local.demo import emulator_environment
    from iotpipe.local.emulator import emulator_process

    work = Path(tempfile.mkdtemp(prefix="iotpipe-bench-fleet-"))
    names = [f"plant-{n:02d}" for n in range(1, args.envs + 1)]
    lines = [f'concurrency = {args.concurrency}', f'state = "{STATE}"', ""]
    for n, name in enumerate(names):
        (work / f"{name}.toml").write_text(CONFIG)
        lines += ["[[env]]", f'name = "{name}"', f'region = "{REGIONS[n % 2]}"', f'config = "{name}.toml"', ""]
    (work / "plants.toml").write_text("\n".join(lines))

    with emulator_process() as emu:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IOTPIPE_"))},
               **emulator_environment(), "AWS_ENDPOINT_URL": emu.url, "PYTHONPATH": str(REPO),
               "IOTPIPE_STATE": STATE}

        def iotpipe(*argv: str, check: tuple[int, ...] = (0,)) -> float:
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "iotpipe", *argv], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=1800)
            elapsed = time.perf_counter() - started
            if proc.returncode not in check:
                raise SystemExit(f"`iotpipe {' '.join(argv)}` exited {proc.returncode}: {proc.stderr[-2000:]}")
            return elapsed

        iotpipe("state", "bootstrap", STATE, "--no-enforce-tls", "--region", REGIONS[0])
        setup = iotpipe("fleet", "up", "plants.toml")
        one = [iotpipe("status", "--env", names[0], "--region", REGIONS[0], "--config", f"{names[0]}.toml")
               for _ in range(args.repeat)]
        fleet = [iotpipe("fleet", "status", "plants.toml") for _ in range(args.repeat)]
        iotpipe("fleet", "destroy", "plants.toml", "--yes")

    single, many = statistics.median(one), statistics.median(fleet)
    report = {
        "envs": args.envs, "regions": list(REGIONS), "concurrency": args.concurrency, "repeat": args.repeat,
        "fleet_up_s": round(setup, 2), "status_one_env_s": round(single, 2),
        "fleet_status_s": round(many, 2), "ratio": round(many / single, 2), "target_ratio": 2.0,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
