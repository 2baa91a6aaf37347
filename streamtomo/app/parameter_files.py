"""Parameter files, read and written in one place.

A parameter file is either a JSON object ``{"name": value}`` or dranspose's list
``[{"name": ..., "data": ...}]`` (what ``dranspose replay -p`` reads and what the
controller records next to a scan's recordings, as ``.json`` or, with binary
parameters, ``.cbor``). dranspose's own parameters in it (``references``,
``dump_prefix``) are not configuration and are skipped; any other unknown name is an
error (:class:`ConfigError`), so a misspelt parameter never goes unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from streamtomo.pipeline.config import ConfigError, PipelineConfig

NOT_CONFIGURATION = frozenset({"references", "dump_prefix"})


class ParameterFileError(ValueError):
    """A parameter file cannot be read or has the wrong shape; the message says which."""


def config_values(doc: Any, source: str = "parameters") -> dict[str, Any]:
    """Configuration values from a parsed parameter file (object or dranspose list)."""
    if isinstance(doc, list):
        try:
            values = {p["name"]: p.get("value", p.get("data")) for p in doc}
        except (TypeError, KeyError, AttributeError):
            raise ParameterFileError(f"{source}: every entry of a parameter list needs a 'name'") from None
    elif isinstance(doc, dict):
        values = dict(doc)
    else:
        raise ParameterFileError(f"{source}: expected a JSON object or a dranspose parameter list")
    decoded: dict[str, Any] = {}
    for name, value in values.items():
        if name in NOT_CONFIGURATION:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError as error:
                raise ParameterFileError(f"{source}: parameter {name!r} is not UTF-8 text ({error.reason})") from None
        decoded[name] = value
    return decoded


def read_config_values(path: str | Path) -> dict[str, Any]:
    """:func:`config_values` of a file: JSON, or CBOR for a ``.cbor`` file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ParameterFileError(f"cannot read parameter file {path}: {error.strerror}") from None
    if path.suffix == ".cbor":
        import cbor2

        if not raw:
            raise ParameterFileError(f"{path} is empty: expected a CBOR parameter list")
        try:
            doc = cbor2.loads(raw)
        except EOFError:  # cbor2's CBORDecodeEOF: the item ends past the end of the file
            raise ParameterFileError(f"{path} is cut short: its CBOR data ends inside an item") from None
        except Exception as error:  # cbor2 raises several kinds for bytes that are no CBOR
            raise ParameterFileError(f"{path} does not decode as CBOR: {error}") from None
    else:
        try:
            doc = json.loads(raw)
        except ValueError as error:
            raise ParameterFileError(f"{path} is not JSON: {error}") from None
    return config_values(doc, str(path))


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """The configuration of a parameter file (defaults without one), with ``overrides``
    (None values ignored) on top. Raises :class:`ParameterFileError` or :class:`ConfigError`."""
    values = read_config_values(path) if path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return PipelineConfig.from_mapping(values)


def parameter_list(config: PipelineConfig) -> list[dict[str, str]]:
    """dranspose's parameter-file form: one entry per config field (values as ``str``)."""
    return [{"name": f.name, "data": str(getattr(config, f.name))} for f in fields(PipelineConfig)]


def write_parameter_file(config: PipelineConfig, path: Path) -> Path:
    path.write_text(json.dumps(parameter_list(config), indent=1))
    return path


__all__ = [
    "ConfigError",
    "ParameterFileError",
    "config_values",
    "load_config",
    "parameter_list",
    "read_config_values",
    "write_parameter_file",
]
