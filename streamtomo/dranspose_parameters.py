"""PipelineConfig <-> dranspose parameters: one parameter per config field, same name.

Also the ``references`` binary parameter through which the reducer hands every
worker the same darks and flats (see README, "How every worker gets the same darks and flats").
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, fields
from typing import Any

from dranspose.parameters import (
    BinaryParameter,
    BoolParameter,
    FloatParameter,
    IntParameter,
    ParameterBase,
    StrParameter,
)

from streamtomo.pipeline.config import ConfigError, PipelineConfig
from streamtomo.pipeline.correction.references import ReferenceSet

logger = logging.getLogger(__name__)

REFERENCES = "references"
_PARAMETER_TYPES: dict[str, type[ParameterBase]] = {
    "str": StrParameter,
    "int": IntParameter,
    "float": FloatParameter,
    "bool": BoolParameter,
}


def describe_parameters() -> list[ParameterBase]:
    """dranspose parameter descriptions for every config field, plus references."""
    out: list[ParameterBase] = []
    for f in fields(PipelineConfig):
        cls = _PARAMETER_TYPES[str(f.type)]
        default = f.default if f.default is not MISSING else None
        out.append(cls(name=f.name, default=default, description=f.metadata.get("help")))
    out.append(BinaryParameter(name=REFERENCES, description="darks and flats shared by the reducer (internal)"))
    return out


def _value(parameter: Any) -> Any:
    value = getattr(parameter, "value", None)
    if value is None:
        data = getattr(parameter, "data", b"")
        value = data.decode() if isinstance(data, bytes) else data
    return value


_NAMES = tuple(f.name for f in fields(PipelineConfig))


class ConfigCache:
    """Builds a PipelineConfig from dranspose parameters, re-parsing only on change.

    A bad value is logged once and the last good configuration stays in force.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._objects: tuple[Any, ...] | None = None  # the parameter objects the configuration was read from
        self._config = PipelineConfig()
        self._refs_key: bytes | None = None
        self._refs: ReferenceSet | None = None
        self.error: str = ""

    def config(self, parameters: dict[Any, Any]) -> PipelineConfig:
        # Called for every event in every worker and the reducer: the same parameter
        # objects (dranspose replaces an object when its value changes, and the
        # references held here keep their ids from being reused) give the same
        # configuration without reading ~50 values.
        # tuple == tuple compares element by element in C, identity first: 2 us, where a
        # generator over the ~50 names took 30 us per event (in every worker and the reducer).
        objects = tuple(map(parameters.get, _NAMES))
        if objects == self._objects:
            return self._config
        self._objects = objects
        key = tuple(None if p is None else _value(p) for p in objects)
        if key != self._key:
            self._key = key
            values = {n: v for n, v in zip(_NAMES, key, strict=True) if v is not None}
            try:
                self._config = PipelineConfig.from_mapping(values)
                self.error = ""
            except ConfigError as error:
                self.error = str(error)
                logger.warning("parameters rejected, keeping the previous ones: %s", error)
        return self._config

    def references(self, parameters: dict[Any, Any]) -> ReferenceSet | None:
        parameter = parameters.get(REFERENCES)
        data = getattr(parameter, "data", b"") if parameter is not None else b""
        if not data:
            return None
        if data is not self._refs_key and data != self._refs_key:
            self._refs = ReferenceSet.from_bytes(data)
            self._refs_key = data
        return self._refs
