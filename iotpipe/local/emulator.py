"""The embedded AWS emulator: a moto server on 127.0.0.1, set up the way iotpipe needs it.

moto is an optional dependency (`pip install 'iotpipe[local]'`), imported only here.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def embedded_emulator(port: int = 0) -> Iterator[str]:
    """Run a moto server on 127.0.0.1 for the duration of the block; yield its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ConfigError("the embedded emulator needs moto: pip install 'iotpipe[local]'") from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    _no_docker_invocations()
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
