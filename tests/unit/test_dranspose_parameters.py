"""ConfigCache: read the parameters once per change of any of them."""

from __future__ import annotations

import pytest
from dranspose.protocol import ParameterName, WorkParameter

from streamtomo.dranspose_parameters import ConfigCache


def _param(name: str, value: str) -> WorkParameter:
    return WorkParameter(name=ParameterName(name), data=value.encode())


def test_the_same_parameter_objects_give_the_same_configuration_and_a_new_one_a_new() -> None:
    cache = ConfigCache()
    parameters = {ParameterName("center"): _param("center", "12.5"), ParameterName("rows"): _param("rows", "3")}
    first = cache.config(parameters)
    assert first.center == "12.5"
    assert cache.config(parameters) is first
    parameters[ParameterName("center")] = _param("center", "14")  # dranspose replaces the object
    assert cache.config(parameters).center == "14"
    del parameters[ParameterName("rows")]  # a parameter gone: its default again
    assert cache.config(parameters).rows == cache.config({}).rows


def test_a_bad_value_keeps_the_last_good_configuration_and_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = ConfigCache()
    good = cache.config({ParameterName("center"): _param("center", "12.5")})
    bad = {ParameterName("n_projections"): _param("n_projections", "-3")}
    assert cache.config(bad) is good and cache.config(bad) is good
    assert cache.error and sum("parameters rejected" in r.getMessage() for r in caplog.records) == 1
