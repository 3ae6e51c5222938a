"""The pipeline's steps in convergence order; destroy walks them in reverse.

The engine runs resources along their ``depends_on`` edges (in parallel), and this order with
one worker: every guarantee below is also a declared edge (tests/test_depends_on.py checks
both that the order respects the edges and that the edges below exist).

The processor (lambda_) comes before its producer (iot): the topic rule starts delivering
readings the moment it exists, and a mapping reading from LATEST only starts at the tip it
finds once Enabled, so a reading the rule delivered earlier would be skipped. With the
mapping created (and waited for) first, there is a reader before there is a writer; destroy,
in reverse, stops the writer first.

The monitor (topic, alarms, dashboard) comes last: its alarms name the function, mapping,
stream, rule and table; destroy removes them first, so no alarm fires about a pipeline being
taken down on purpose.
"""

from __future__ import annotations

from importlib import import_module

from iotpipe.steps.base import Resource

STEP_ORDER = ("kms", "storage", "stream", "lambda_", "iot", "trail", "monitor")


def all_resources(steps: tuple[str, ...] = STEP_ORDER) -> list[Resource]:
    """Every resource, in order: each step module exposes ``RESOURCES`` (a tuple, in order)."""
    resources: list[Resource] = []
    for step in steps:
        try:
            module = import_module(f"iotpipe.steps.{step}")
        except ModuleNotFoundError as err:
            if err.name == f"iotpipe.steps.{step}":
                continue  # a step not written yet
            raise
        resources.extend(module.RESOURCES)
    return resources
