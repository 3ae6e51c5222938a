"""The pipeline's steps in convergence order; destroy walks them in reverse."""

from __future__ import annotations

from importlib import import_module

from iotpipe.steps.base import Resource

STEP_ORDER = ("kms", "storage", "stream", "iot", "lambda_", "trail")


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
