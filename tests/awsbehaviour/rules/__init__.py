"""The behaviour table: every AWS behaviour moto does not reproduce, one module per service.

Each module exposes ``RULES`` (a tuple). Durations are typical figures from the cited sources
(or, where AWS documents none, deliberately long enough to make a missing wait fail); tests
pick the rules they exercise by name (``rules_named``) or take them all (``ALL_RULES``).
"""

from __future__ import annotations

from importlib import import_module

from tests.awsbehaviour.model import Rule

SERVICES = ("dynamodb", "kinesis", "lambda_", "iot", "kms", "iam", "s3", "cloudtrail", "sqs", "sns")


def _collect() -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for service in SERVICES:
        try:
            module = import_module(f"tests.awsbehaviour.rules.{service}")
        except ModuleNotFoundError as err:
            if err.name == f"tests.awsbehaviour.rules.{service}":
                continue
            raise
        rules.extend(module.RULES)
    names = [r.name for r in rules]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"rule names must be unique: {sorted(duplicated)}")
    return tuple(rules)


ALL_RULES: tuple[Rule, ...] = _collect()


def rules_named(*names: str) -> tuple[Rule, ...]:
    by_name = {r.name: r for r in ALL_RULES}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"no such behaviour rule: {missing}")
    return tuple(by_name[n] for n in names)


def on_every_account(rules: tuple[Rule, ...] = ALL_RULES) -> tuple[Rule, ...]:
    """The rules that hold for any caller: all but refusals armed always and unconditionally.

    Such a rule (no trigger, no ``when``; e.g. a caller denied iam:PassRole) refuses every call
    it names: it is a scenario a test picks with ``rules_named``, not how AWS treats everyone,
    and with it no run could succeed.
    """
    from tests.awsbehaviour.model import ErrorRule

    return tuple(r for r in rules if not (isinstance(r, ErrorRule) and r.after is None
                                          and r.when is None))
