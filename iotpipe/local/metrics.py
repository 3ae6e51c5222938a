"""The CloudWatch metrics AWS would publish for the pipeline, published by its local stand-ins.

On AWS, Kinesis counts IncomingRecords, Lambda counts Invocations, Errors and IteratorAge (and,
per event source mapping, the records it gave up on), and CloudWatch Logs turns the handler's
Embedded Metric Format lines into the ``iotpipe`` metrics. An emulator publishes none of
these: moto holds only what someone put with PutMetricData. So the local event source
(simulator.py) records what each of those services would have counted and puts it with
PutMetricData, which is what makes `iotpipe health` and the dashboard show the demo's flow.

Values are added up per metric and flushed in one PutMetricData per 1,000 metrics: a run's
worth of counts is one datapoint (sums for counts, the maximum for IteratorAge).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from iotpipe.aws import error_code
from iotpipe.steps.base import StepContext

PUT_LIMIT = 1000  # metric data per PutMetricData request (CloudWatch API reference)
MAXIMUM = frozenset({("AWS/Lambda", "IteratorAge")})  # kept as the largest value, not a sum

Key = tuple[str, str, tuple[tuple[str, str], ...], str]


class LocalMetrics:
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self._values: dict[Key, float] = {}
        self._lock = threading.Lock()

    def add(self, namespace: str, name: str, value: float, unit: str = "Count", **dimensions: str) -> None:
        key = (namespace, name, tuple(sorted(dimensions.items())), unit)
        with self._lock:
            if (namespace, name) in MAXIMUM:
                self._values[key] = max(self._values.get(key, value), value)
            else:
                self._values[key] = self._values.get(key, 0.0) + value

    # what each service would count -----------------------------------------------------------
    def published(self, records: int) -> None:
        self.add("AWS/Kinesis", "IncomingRecords", records, StreamName=self.ctx.names.stream)

    def invocation(self, *, error: bool, iterator_age_ms: float) -> None:
        function = self.ctx.names.function
        self.add("AWS/Lambda", "Invocations", 1, FunctionName=function)
        self.add("AWS/Lambda", "Errors", 1 if error else 0, FunctionName=function)
        self.add("AWS/Lambda", "IteratorAge", max(0.0, iterator_age_ms), unit="Milliseconds",
                 FunctionName=function)

    def given_up(self, records: int) -> None:
        """Records the mapping sent to its on-failure destination (a per-mapping metric)."""
        uuid = self.ctx.refs.get("lambda.event_source_mapping", {}).get("uuid")
        if uuid:
            self.add("AWS/Lambda", "OnFailureDestinationDeliveredEventCount", records,
                     EventSourceMappingUUID=uuid)

    def embedded(self, document: Mapping[str, Any]) -> None:
        """The metrics CloudWatch Logs extracts from one Embedded Metric Format log line."""
        directives = (document.get("_aws") or {}).get("CloudWatchMetrics") or []
        for directive in directives:
            for dimension_set in directive.get("Dimensions") or [[]]:
                dims = {d: str(document.get(d, "")) for d in dimension_set}
                for metric in directive.get("Metrics", []):
                    value = document.get(metric["Name"])
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.add(directive["Namespace"], metric["Name"], float(value),
                                 metric.get("Unit", "None"), **dims)

    def flush(self, client: Any) -> int:
        """Put everything recorded so far; returns the number of metric data put."""
        with self._lock:
            values, self._values = self._values, {}
        by_namespace: dict[str, list[dict[str, Any]]] = {}
        for (namespace, name, dims, unit), value in sorted(values.items()):
            by_namespace.setdefault(namespace, []).append({
                "MetricName": name, "Value": value, "Unit": unit,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims]})
        for namespace, data in by_namespace.items():
            for start in range(0, len(data), PUT_LIMIT):
                client.put_metric_data(Namespace=namespace, MetricData=data[start:start + PUT_LIMIT])
        return len(values)


LOG_BATCH = 1000  # events per PutLogEvents (AWS allows 10,000 and 1 MB)


class LocalLogs:
    """The handler's log lines, written to the function's log group as Lambda would, so that
    `iotpipe logs` reads the same events on the emulator as on AWS."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, created: float, line: str) -> None:
        with self._lock:
            self._events.append({"timestamp": int(created * 1000), "message": line})

    def flush(self, client: Any, stream: str) -> int:
        with self._lock:
            events, self._events = sorted(self._events, key=lambda e: e["timestamp"]), []
        if not events:
            return 0
        group = self.ctx.names.lambda_log_group
        try:
            client.create_log_stream(logGroupName=group, logStreamName=stream)
        except Exception as err:
            if error_code(err) != "ResourceAlreadyExistsException":
                raise
        for start in range(0, len(events), LOG_BATCH):
            client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[start:start + LOG_BATCH])
        return len(events)
