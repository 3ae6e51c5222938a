"""The behaviour layer for real HTTP: a proxy in front of the moto server.

The e2e tests run ``iotpipe`` as a subprocess, where no botocore hook of the test can reach.
This proxy sits between that subprocess and moto and asks the same ``Behaviour`` the
in-process hooks ask, so one table of rules drives both:

- it names every request (service from the SigV4 credential scope, operation from
  ``X-Amz-Target``, the query ``Action`` or the botocore model's ``requestUri`` templates) and
  reads its API parameters (JSON body, form, path labels, query string, headers);
- a refusal is answered in the protocol's own wire format, so botocore raises the modelled
  exception class with AWS's message, and nothing reaches moto;
- a ghost is answered with its body; a successful read's JSON answer gets the transitional
  states in force; a successful call arms the rules it triggers.

Time is the ``Behaviour``'s ``FakeClock``. The subprocess gets a virtual ``time.sleep`` and
``time.monotonic`` (``timeshim/sitecustomize.py``) that advance this clock through the control
path ``/__awsbehaviour/sleep`` instead of waiting, so a 20-second CREATING window costs nothing.

Loopback only, one thread per connection with a bounded number of requests in flight, and a
watchdog that stops it when idle or too old, so a failed test cannot leave it running.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.parsers
import botocore.session
from botocore.awsrequest import HeadersDict

from tests.awsbehaviour.behaviour import Behaviour
from tests.awsbehaviour.clock import FakeClock
from tests.awsbehaviour.model import Call, ErrorRule, GhostRule, Rule, StateRule

CONTROL = "/__awsbehaviour"
TIMESHIM = Path(__file__).resolve().parent / "timeshim"  # put on the subprocess's PYTHONPATH
CLOCK_ENV = "AWSBEHAVIOUR_CLOCK_URL"  # tells the shim where to advance the clock
SERVICES = ("dynamodb", "kinesis", "kms", "logs", "cloudtrail", "sts", "iam", "sqs", "s3",
            "lambda", "iot", "iot-data", "sns", "cloudwatch", "resourcegroupstaggingapi")
JSON_PROTOCOLS = ("json", "rest-json")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "expect", "content-length", "date", "server"}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


# -- naming a request ---------------------------------------------------------------------------

@dataclass
class _Route:
    operation: str
    method: str
    pattern: re.Pattern[str]
    labels: list[str]  # label names in group order
    query: list[tuple[str, str | None]]  # literal query keys (and values) the URI requires
    score: int
    headers: list[str] = field(default_factory=list)  # required header members (CopySource)
    query_members: list[str] = field(default_factory=list)  # required query members (uploadId)


@dataclass
class _Service:
    name: str
    model: Any
    routes: list[_Route] = field(default_factory=list)


def _route(operation: str, op: Any) -> _Route:
    """PutObject and CopyObject share a URI; the required members in headers tell them apart."""
    path, _, query = op.http["requestUri"].partition("?")
    labels: list[str] = []
    regex = ""
    literal = 0
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{"):
            name = part[1:-1]
            greedy = name.endswith("+")
            labels.append(name.rstrip("+"))
            regex += "(.+)" if greedy else "([^/]+)"
        else:
            regex += re.escape(part)
            literal += len(part)
    required = []
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        required.append((key, value if eq else None))
    shape = op.input_shape
    needed = [m for m in (shape.required_members if shape is not None else [])]
    where = {m: shape.members[m].serialization for m in needed}
    headers = [where[m].get("name", m) for m in needed if where[m].get("location") == "header"]
    queries = [where[m].get("name", m) for m in needed if where[m].get("location") == "querystring"]
    score = 1000 * (len(required) + len(headers) + len(queries)) + literal
    return _Route(operation, op.http["method"], re.compile(regex.rstrip("/") + "/?$"), labels,
                  required, score, headers, queries)


class Catalogue:
    """Services by SigV4 scope name, and each REST service's routes, from botocore's models."""

    def __init__(self, services: Iterable[str] = SERVICES) -> None:
        session = botocore.session.get_session()
        self.by_scope: dict[str, _Service] = {}
        for name in services:
            model = session.get_service_model(name)
            service = _Service(name, model)
            if model.protocol in ("rest-json", "rest-xml"):
                for op in model.operation_names:
                    service.routes.append(_route(op, model.operation_model(op)))
                # Same URI twice (PutBucketLifecycle and ...Configuration): the current
                # operation, not the deprecated one; then the plain one (ListBuckets, not
                # ListDirectoryBuckets, which lives on S3 Express endpoints).
                service.routes.sort(key=lambda r, m=model: (
                    -r.score, bool(m.operation_model(r.operation).deprecated), len(r.operation)))
            scope = model.metadata.get("signingName") or model.metadata["endpointPrefix"]
            self.by_scope[scope] = service

    @staticmethod
    def region(headers: Any) -> str:
        match = _SCOPE.search(headers.get("Authorization", ""))
        return match.group(1) if match else ""

    def identify(self, method: str, raw_path: str, headers: Any, body: bytes
                 ) -> tuple[_Service, str, dict[str, Any]] | None:
        match = _SCOPE.search(headers.get("Authorization", ""))
        service = self.by_scope.get(match.group(2)) if match else None
        if service is None:
            return None
        path, _, query = raw_path.partition("?")
        qs = urllib.parse.parse_qs(query, keep_blank_values=True)
        protocol = service.model.protocol
        if protocol == "json":
            target = headers.get("X-Amz-Target", "")
            params = json.loads(body or b"{}")
            return service, target.rsplit(".", 1)[-1], params if isinstance(params, dict) else {}
        if protocol == "query":
            form = urllib.parse.parse_qs(body.decode() if method == "POST" else query,
                                         keep_blank_values=True)
            params = {k: v[0] for k, v in form.items()}
            return service, params.pop("Action", ""), params
        for route in service.routes:
            if route.method != method:
                continue
            found = route.pattern.match(path.rstrip("/") or "/")
            if found is None or any(k not in qs or (v is not None and qs[k][0] != v)
                                    for k, v in route.query):
                continue
            if any(headers.get(h) is None for h in route.headers) or any(
                    q not in qs for q in route.query_members):
                continue
            return service, route.operation, _rest_params(
                service.model.operation_model(route.operation), route, found, qs, headers, body)
        return None


@functools.cache
def _catalogue() -> Catalogue:
    """Built once per process: parsing the models is most of a proxy's start-up."""
    return Catalogue()


def _rest_params(op: Any, route: _Route, found: re.Match[str], qs: dict[str, list[str]],
                 headers: Any, body: bytes) -> dict[str, Any]:
    uri = {name: urllib.parse.unquote(value) for name, value in zip(route.labels, found.groups(),
                                                                     strict=True)}
    params: dict[str, Any] = {}
    shape = op.input_shape
    if shape is None:
        return params
    payload = shape.serialization.get("payload")
    loose = {}
    if op.service_model.protocol == "rest-json" and not payload and body:
        try:
            loose = json.loads(body)
        except ValueError:
            loose = {}
    for member, member_shape in shape.members.items():
        where = member_shape.serialization.get("location")
        wire = member_shape.serialization.get("name", member)
        if where == "uri" and wire in uri:
            params[member] = uri[wire]
        elif where == "querystring" and wire in qs:
            params[member] = qs[wire][0]
        elif where == "header" and headers.get(wire) is not None:
            params[member] = headers.get(wire)
        elif where is None and isinstance(loose, dict) and wire in loose:
            params[member] = loose[wire]
    return params


# -- answering ----------------------------------------------------------------------------------

def error_response(service: _Service, method: str, rule: ErrorRule, message: str
                   ) -> tuple[int, dict[str, str], bytes]:
    """AWS's refusal in the service's wire format, the way botocore's parsers read it."""
    protocol = service.model.protocol
    code = rule.code
    if protocol == "json":
        headers = {"Content-Type": f"application/x-amz-json-{service.model.metadata['jsonVersion']}"}
        shape = code
        if "awsQueryCompatible" in service.model.metadata:
            # SQS speaks JSON but keeps its query-era codes in this header, and the error's
            # shape name in __type (botocore maps the class from the latter, reports the former).
            headers["x-amzn-query-error"] = f"{code};Sender"
            shape = f"com.amazonaws.{service.name}#{query_shape(code)}"
        body = json.dumps({"__type": shape, "message": message}).encode()
    elif protocol == "rest-json":
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code}
        body = json.dumps({"Type": "User", "message": message}).encode()
    elif protocol == "rest-xml":
        headers = {"Content-Type": "application/xml"}
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{_xml(code)}</Code>"
                f"<Message>{_xml(message)}</Message><RequestId>awsbehaviour</RequestId></Error>"
                ).encode()
    else:  # query
        headers = {"Content-Type": "text/xml"}
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{_xml(code)}</Code>"
                f"<Message>{_xml(message)}</Message></Error><RequestId>awsbehaviour</RequestId>"
                "</ErrorResponse>").encode()
    return rule.http_status, headers, b"" if method == "HEAD" else body


def query_shape(code: str) -> str:
    """The error shape of a query-era code: AWS.SimpleQueueService.QueueDeletedRecently."""
    return code.rsplit(".", 1)[-1]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json_response(service: _Service, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    raw = json.dumps(body, default=str).encode()
    kind = "application/json" if service.model.protocol == "rest-json" else \
        f"application/x-amz-json-{service.model.metadata['jsonVersion']}"
    return 200, {"Content-Type": kind, "x-amz-crc32": str(zlib.crc32(raw))}, raw


# -- the proxy ----------------------------------------------------------------------------------

@dataclass
class Seen:
    """One request as the proxy handled it: what tests count and assert on."""

    service: str
    operation: str
    status: int
    answered_by: str  # "moto", or the rule that refused or ghosted it


class BehaviourProxy:
    """``with BehaviourProxy(moto_url, rules) as proxy:`` — then point the CLI at ``proxy.url``."""

    def __init__(self, upstream: str, rules: Iterable[Rule], *, region: str,
                 clock: FakeClock | None = None, max_in_flight: int = 16,
                 idle_s: float = 120.0, max_lifetime_s: float = 900.0) -> None:
        rules = list(rules)
        self.catalogue = _catalogue()
        for rule in rules:
            if isinstance(rule, GhostRule):
                protocol = botocore.session.get_session().get_service_model(rule.service).protocol
                if protocol not in JSON_PROTOCOLS:
                    raise ValueError(f"{rule.name}: the proxy serves ghosts as JSON answers only")
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.upstream_url = upstream
        self.region = region
        self.behaviour = Behaviour(rules, clock or FakeClock(), peek=self._peek_client)
        self.seen: list[Seen] = []
        self._peek_clients: dict[str, Any] = {}
        self._peek_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._idle_s = idle_s
        self._deadline = time.monotonic() + max_lifetime_s
        self._last = time.monotonic()
        self._parsers: dict[str, Any] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    # what tests read
    @property
    def clock(self) -> FakeClock:
        return self.behaviour.clock

    @property
    def clock_url(self) -> str:
        return self.url + CONTROL

    def operations(self, *, mutating: bool | None = None) -> list[tuple[str, str]]:
        from tests.support import is_mutating

        return [(s.service, s.operation) for s in list(self.seen)
                if mutating is None or is_mutating(s.operation) == mutating]

    def subprocess_env(self) -> dict[str, str]:
        """What the CLI's environment needs: the endpoint, the clock and the time shim."""
        return {"AWS_ENDPOINT_URL": self.url, CLOCK_ENV: self.clock_url}

    # lifecycle
    def start(self) -> BehaviourProxy:
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name="awsbehaviour-proxy", daemon=True)
        watch = threading.Thread(target=self._watchdog, name="awsbehaviour-proxy-watchdog",
                                 daemon=True)
        self._threads = [serve, watch]
        serve.start()
        watch.start()
        return self

    def stop(self) -> None:
        if self._threads:
            self._server.shutdown()
            self._server.server_close()
            self._threads = []

    def __enter__(self) -> BehaviourProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _watchdog(self) -> None:
        while self._threads:
            now = time.monotonic()
            if now > self._deadline or now - self._last > self._idle_s:
                threading.Thread(target=self.stop, daemon=True).start()
                return
            time.sleep(0.5)

    def _peek_client(self, service: str) -> Any:
        with self._peek_lock:
            if service not in self._peek_clients:
                self._peek_clients[service] = boto3.session.Session(region_name=self.region).client(
                    service, endpoint_url=self.upstream_url)
            return self._peek_clients[service]

    # one request
    def handle(self, method: str, path: str, headers: Any, body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        self._last = time.monotonic()
        if path.startswith(CONTROL):
            return self._control(path, body)
        named = self.catalogue.identify(method, path, headers, body)
        if named is None:
            return self._forward(method, path, headers, body)
        service, operation, params = named
        call = Call(service.name, operation, params, self.clock.now(),
                    region=self.catalogue.region(headers))
        refused = self.behaviour.refusal(call)
        if refused is not None:
            rule, message = refused
            self.seen.append(Seen(service.name, operation, rule.http_status, rule.name))
            return error_response(service, method, rule, message)
        ghost = self.behaviour.ghost(call)
        if ghost is not None:
            self.seen.append(Seen(service.name, operation, 200, "ghost"))
            return _json_response(service, ghost)
        status, out_headers, out_body = self._forward(method, path, headers, body)
        self.seen.append(Seen(service.name, operation, status, "moto"))
        if status >= 300:
            return status, out_headers, out_body
        call.now = self.clock.now()
        out_body = self._patch(service, call, out_headers, out_body)
        if any(getattr(r, "after", None) == (service.name, operation) for r in self.behaviour.rules):
            self.behaviour.succeeded(call, self._parse(service, operation, status, out_headers,
                                                       out_body))
        return status, out_headers, out_body

    def _control(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == CONTROL + "/sleep":
            seconds = float(json.loads(body or b"{}").get("seconds", 0))
            self.clock.sleep(seconds)
        elif path != CONTROL + "/now":
            return 404, {"Content-Type": "application/json"}, b"{}"
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"now": self.clock.now()}).encode()

    def _forward(self, method: str, path: str, headers: Any, body: bytes
                 ) -> tuple[int, dict[str, str], bytes]:
        with self._slots:
            conn = http.client.HTTPConnection(*self.upstream, timeout=60)
            try:
                sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
                sent["Content-Length"] = str(len(body))
                conn.request(method, path, body=body if body or method not in ("GET", "HEAD")
                             else None, headers=sent)
                answer = conn.getresponse()
                data = answer.read()
                out = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP}
                if method == "HEAD":
                    length = answer.getheader("Content-Length")
                    if length is not None:
                        out["Content-Length"] = length
                return answer.status, out, data
            finally:
                conn.close()

    def _patch(self, service: _Service, call: Call, headers: dict[str, str], body: bytes) -> bytes:
        if not any(r.service == service.name and call.operation in (
                r.reads if isinstance(r, StateRule) else getattr(r, "list_reads", ()))
                for r in self.behaviour.rules):
            return body
        if service.model.protocol not in JSON_PROTOCOLS:
            self._patch_headers(service, call, headers, body)
            return body
        if not body:
            return body
        parsed = json.loads(body)
        before = json.dumps(parsed, sort_keys=True)
        self.behaviour.patch(call, parsed)
        if json.dumps(parsed, sort_keys=True, default=str) == before:
            return body
        raw = json.dumps(parsed, default=str).encode()
        for name in list(headers):
            if name.lower() == "x-amz-crc32":  # DynamoDB's checksum, which botocore verifies
                headers[name] = str(zlib.crc32(raw))
        return raw

    def _patch_headers(self, service: _Service, call: Call, headers: dict[str, str],
                       body: bytes) -> None:
        """An XML answer: the states may only change members AWS sends as headers
        (S3's x-amz-transition-default-minimum-object-size); anything else is refused loudly."""
        parsed = self._parse(service, call.operation, 200, headers, body)
        before = json.loads(json.dumps(parsed, default=str))
        self.behaviour.patch(call, parsed)
        after = json.loads(json.dumps(parsed, default=str))
        members = service.model.operation_model(call.operation).output_shape.members
        for name in set(before) | set(after):
            if name == "ResponseMetadata" or before.get(name) == after.get(name):
                continue
            where = members[name].serialization if name in members else {}
            if where.get("location") != "header":
                raise NotImplementedError(f"{call.operation}: the proxy rewrites only header "
                                          f"members of XML answers, not {name}")
            wire = where.get("name", name)
            for existing in [k for k in headers if k.lower() == wire.lower()]:
                del headers[existing]
            if after.get(name) is not None:
                headers[wire] = str(after[name])

    def _parse(self, service: _Service, operation: str, status: int, headers: dict[str, str],
               body: bytes) -> dict[str, Any]:
        """The answer as botocore hands it to the caller (what ``trigger_key`` reads)."""
        op = service.model.operation_model(operation)
        if op.output_shape is None or op.has_streaming_output:
            return {}
        parser = self._parsers.setdefault(service.model.protocol,
                                          botocore.parsers.create_parser(service.model.protocol))
        return parser.parse({"status_code": status, "headers": HeadersDict(headers), "body": body},
                            op.output_shape)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: botocore pools its connections
            timeout = 60  # an idle kept-alive connection frees its thread

            def _serve(self) -> None:
                body = self._body()
                try:
                    status, headers, data = proxy.handle(self.command, self.path, self.headers, body)
                except Exception as err:  # noqa: BLE001 - a proxy bug shows as a 500, named
                    status, headers = 500, {"Content-Type": "text/plain"}
                    data = f"awsbehaviour proxy: {type(err).__name__}: {err}".encode()
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(data)))
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler
