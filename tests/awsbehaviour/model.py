"""The shapes of the behaviour table: what a rule says, and what it is matched against.

A rule is *armed* by a trigger call that succeeded (``after``: service and operation) for one
resource (``trigger_key`` picks the resource's key out of the trigger's parameters and
answer), and then applies, for ``duration_s`` on the clock, to the calls it names on the same
resource (``call_key``). A rule without ``after`` is always armed (a permanent denial, a
quota); its ``when`` predicate decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KeyOf = Callable[[dict[str, Any]], Any]
TriggerKeyOf = Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass
class Call:
    """One call as the behaviour engine sees it."""

    service: str  # botocore service name: "dynamodb", "lambda", "iot"...
    operation: str  # "UpdateContinuousBackups"
    params: dict[str, Any]
    now: float
    # Calls moto directly, bypassing every rule: for quota checks ("how many trails exist?").
    peek: Callable[..., dict[str, Any]] | None = None
    region: str = ""  # the client's region, for "{region}" in messages (where known)


@dataclass(frozen=True)
class ErrorRule:
    """AWS refuses ``operation`` with ``code``/``message`` while the rule is armed."""

    name: str
    service: str
    operation: str
    code: str
    message: str  # AWS's text; "{param}" placeholders are filled from the call's parameters
    source: str  # the AWS doc page, API reference or terraform-provider-aws code that shows it
    http_status: int = 400
    after: tuple[str, str] | None = None  # (service, operation) whose success arms the rule
    duration_s: float = 0.0  # how long after the trigger; ignored without ``after``
    trigger_key: TriggerKeyOf | None = None  # the resource the trigger acted on
    call_key: KeyOf | None = None  # the resource this call acts on; None: any resource
    when: Callable[[Call], bool] | None = None  # an extra condition (e.g. a quota reached)
    times: int | None = None  # at most this many refusals per arming (None: the whole window)


@dataclass(frozen=True)
class StateRule:
    """After ``after`` succeeded, reads show a transitional value for ``duration_s``.

    ``patch(parsed, key, value)`` writes ``value`` into the read's answer for resource ``key``
    (a table's TableStatus, one mapping's State inside a list...). A callable ``value`` is
    called with the trigger's parameters: for a setting AWS keeps and moto forgets (what was
    sent is what later reads show).
    """

    name: str
    service: str
    reads: tuple[str, ...]  # operations whose answers are rewritten
    value: Any
    patch: Callable[[dict[str, Any], Any, Any], None]
    after: tuple[str, str]
    duration_s: float
    source: str
    trigger_key: TriggerKeyOf | None = None
    call_key: KeyOf | None = None


@dataclass(frozen=True)
class GhostRule:
    """After a delete succeeded, reads still answer ``body(key)`` for ``duration_s``.

    moto forgets a deleted table or stream at once; AWS shows it DELETING for a while.
    """

    name: str
    service: str
    reads: tuple[str, ...]
    body: Callable[[Any], dict[str, Any]]
    after: tuple[str, str]
    duration_s: float
    source: str
    trigger_key: TriggerKeyOf | None = None
    call_key: KeyOf | None = None
    # ``body(key, answer)`` instead of ``body(key)``: the ghost is what the delete answered
    # (an event source mapping has no name to rebuild it from).
    body_from_answer: bool = False
    # List reads that still show the ghost: ``add_to_list(parsed, key, answer, params)``
    # puts it back into moto's answer (moto's list no longer has it).
    list_reads: tuple[str, ...] = ()
    add_to_list: Callable[[dict[str, Any], Any, dict[str, Any], dict[str, Any]], None] | None = None


Rule = ErrorRule | StateRule | GhostRule


def param(name: str) -> KeyOf:
    """The resource key is one parameter of the call."""
    return lambda params: params.get(name)


def trigger_param(name: str) -> TriggerKeyOf:
    return lambda params, _answer: params.get(name)


def answer_path(*path: str) -> TriggerKeyOf:
    """The resource key comes from the trigger's answer (CreateKey's KeyMetadata.KeyId)."""

    def key(_params: dict[str, Any], answer: dict[str, Any]) -> Any:
        value: Any = answer
        for part in path:
            value = (value or {}).get(part)
        return value

    return key


def set_path(*path: str) -> Callable[[dict[str, Any], Any, Any], None]:
    """A patch that sets one nested field of the answer (if the answer has the parent)."""

    def patch(parsed: dict[str, Any], _key: Any, value: Any) -> None:
        node = parsed
        for part in path[:-1]:
            node = node.get(part)
            if not isinstance(node, dict):
                return
        node[path[-1]] = value

    return patch


@dataclass
class Armed:
    """One arming of a rule: for which resource, from when, how often it has fired."""

    rule: Rule
    key: Any
    since: float
    fired: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
