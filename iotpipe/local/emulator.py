"""The embedded AWS emulator: a moto server on 127.0.0.1, set up the way iotpipe needs it.

moto is an optional dependency (`pip install 'iotpipe[local]'`), imported only here.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from iotpipe.errors import ConfigError, EndpointError


def configure(url: str) -> None:
    """Switch Lambda to moto's docker-free backend before anything exists.

    Without it moto tries to run Docker on every Kinesis put once an event source mapping
    exists; functions created before the switch would disappear (moto 5.2).
    """
    request = urllib.request.Request(
        f"{url}/moto-api/config", data=json.dumps({"lambda": {"use_docker": False}}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        response.read()


def reset(url: str) -> None:
    """Wipe every resource in the emulator (and re-apply our settings)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        response.read()
    configure(url)


def _no_docker_invocations() -> None:
    """Stop moto from invoking the function on every Kinesis put.

    moto pushes each record to the mapped function itself, which needs Docker (absent here:
    it only logs "error running docker"). The demo's local event source runs the real handler
    with Lambda-shaped batches instead (iotpipe.local.simulator).
    """
    from moto.awslambda.models import LambdaBackend

    LambdaBackend.send_kinesis_message = lambda self, *args, **kwargs: None  # type: ignore[method-assign]


def ensure_port_free(port: int) -> None:
    """Refuse a busy port before starting: ThreadedMotoServer binds in its own thread and, when
    the bind fails, waits forever for a server that never comes up."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug binds
    try:
        probe.bind(("127.0.0.1", port))
    except OSError as err:
        raise EndpointError(f"cannot listen on 127.0.0.1:{port}: {err.strerror or err} (another emulator or "
                            f"program is using port {port}?): pick another with --port, e.g. --port {port + 1}"
                            ) from None
    finally:
        probe.close()


def _linear_kinesis_puts() -> None:
    """Make moto's Kinesis puts O(1) again: it copies a shard's every sequence number into a
    list to find the last one, on each put, so 100,000 readings took minutes. Same answers."""
    from moto.kinesis.models import Shard

    Shard.get_max_sequence_number = lambda self: next(reversed(self.records), 0)  # type: ignore[method-assign]


def _cached_dispatch_lookups() -> None:
    """Remember what moto's server looks up afresh on every request, though it never changes
    while the server runs: the list of its service packages (one directory listing and about
    170 ``stat`` calls per request, a fifth of the server's time) and each response class's
    method names (``inspect.getmembers``). Same answers; every request of every env of a
    fleet is served by this one process."""
    import functools

    import moto.backends
    import moto.core.responses

    if getattr(moto.backends.list_of_moto_modules, "cache_info", None):
        return  # already done in this process
    modules = moto.backends.list_of_moto_modules
    moto.backends.list_of_moto_modules = functools.cache(lambda: tuple(modules()))
    names = moto.core.responses.method_names_from_class
    moto.core.responses.method_names_from_class = functools.cache(lambda clazz: frozenset(names(clazz)))


@contextmanager
def embedded_emulator(port: int = 0) -> Iterator[str]:
    """Run a moto server on 127.0.0.1 for the duration of the block; yield its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ConfigError("the embedded emulator needs moto: pip install 'iotpipe[local]'") from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    _no_docker_invocations()
    _cached_dispatch_lookups()
    if port:
        ensure_port_free(port)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        url = f"http://{host}:{bound}"
        configure(url)
        yield url
    finally:
        server.stop()


@dataclass
class EmulatorProcess:
    url: str
    pid: int


def _serve_in_child() -> None:
    """Entry point of the emulator child: serve, say where on stdout, then keep quiet.

    stdout and stderr are let go after the URL line, so that a parent which has exited
    (``iotpipe demo --keep``) leaves nothing for the server to write to.
    """
    import os
    import signal
    import threading

    _linear_kinesis_puts()
    ready = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: ready.set())
    with embedded_emulator() as url:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        ready.wait()


@contextmanager
def emulator_process(*, keep: bool = False, start_timeout: float = 60.0) -> Iterator[EmulatorProcess]:
    """Run the emulator in a child process; stop it at the end of the block unless ``keep``.

    A child rather than a thread: the moto server and the caller's boto3 clients (the demo
    pushes 100,000 readings through them) then run on their own interpreters instead of
    taking turns on one GIL. The child is in its own session, so a Ctrl-C meant for the
    demo does not kill a kept emulator, and the demo's own exit stops an unkept one.
    """
    import os
    import selectors
    import subprocess

    try:
        import moto.server  # noqa: F401 - fail here, in one line, rather than in the child
    except ImportError:
        raise ConfigError("the embedded emulator needs moto: pip install 'iotpipe[local]'") from None
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
    child = subprocess.Popen(
        [sys.executable, "-c", "from iotpipe.local.emulator import _serve_in_child; _serve_in_child()"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True, text=True)
    try:
        assert child.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            line = child.stdout.readline() if selector.select(start_timeout) else ""
        child.stdout.close()
        if not line.startswith("http://"):
            raise EndpointError(f"the embedded emulator did not start within {start_timeout:.0f}s "
                                f"(exit code {child.poll()})")
        yield EmulatorProcess(line.strip(), child.pid)
    finally:
        if not keep or child.poll() is not None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
