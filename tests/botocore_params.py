"""Parameter paths of AWS calls, in one form for what iotpipe sends and for a service model.

A path names a parameter the way a service model declares it: ``Tags``,
``LifecycleConfiguration.Rules[].NoncurrentVersionExpiration.NoncurrentDays``. Map keys are user
data (tag keys, environment variables), so a map is one path ending in ``{}``.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 12


def model_paths(shape: Any, prefix: str = "", seen: tuple[str, ...] = ()) -> set[str]:
    """Every parameter path a botocore input shape accepts."""
    out: set[str] = set()
    if shape is None or len(seen) > MAX_DEPTH or shape.name in seen:
        return out
    seen = (*seen, shape.name)
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            path = f"{prefix}.{name}" if prefix else name
            out.add(path)
            out |= model_paths(member, path, seen)
    elif shape.type_name == "list":
        out |= model_paths(shape.member, f"{prefix}[]", seen)
    elif shape.type_name == "map":
        out.add(f"{prefix}{{}}")
    return out


def sent_paths(shape: Any, value: Any, prefix: str = "") -> set[str]:
    """The parameter paths present in ``value`` (API parameters), walked along ``shape``.

    A key the shape does not know is still reported (as it would be sent), so that a
    parameter missing from an older model is caught.
    """
    out: set[str] = set()
    if isinstance(value, dict) and (shape is None or shape.type_name == "structure"):
        members = shape.members if shape is not None else {}
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= sent_paths(members.get(key), item, path)
    elif isinstance(value, dict):  # a map: its keys are data
        out.add(f"{prefix}{{}}")
    elif isinstance(value, list | tuple):
        for item in value:
            out |= sent_paths(shape.member if shape is not None else None, item, f"{prefix}[]")
    return out
