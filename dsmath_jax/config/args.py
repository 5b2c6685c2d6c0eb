"""The argument of an experiment file's `get_config(arg)`: "a,b,tiny" parsed by the values each group allows."""

from __future__ import annotations

from typing import Any


def parse_arg(arg: str | None, choices: dict[str, tuple[str, ...]]) -> dict[str, str | bool]:
    """Parses a config argument "a,b" into {group: value} by the allowed values of each group; "tiny" is a
    flag. Example: parse_arg("openwebmath,tiny", {"corpus": ("openwebmath", ...)})."""
    out: dict[str, Any] = {"tiny": False}
    for part in filter(None, (arg or "").split(",")):
        if part == "tiny":
            out["tiny"] = True
            continue
        for group, values in choices.items():
            if part in values:
                out[group] = part
                break
        else:
            allowed = sorted({v for vs in choices.values() for v in vs} | {"tiny"})
            raise ValueError(f"unknown config argument {part!r}; allowed: {allowed}")
    return out
