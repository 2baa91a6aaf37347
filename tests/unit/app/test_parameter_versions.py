"""A held dranspose parameter equals its own version: the register loop's test for "unchanged"."""

from __future__ import annotations

from uuid import uuid4

from dranspose.protocol import WorkParameter

from streamtomo.app import parameter_versions


def test_a_parameter_equals_its_version_and_no_other() -> None:
    parameter_versions.install()
    held = WorkParameter(name="center", data=b"14.3")
    # dranspose's loop: fetch when ``self.parameters[name] != paramuuids[name]``
    assert (held != held.uuid) is False  # the operator dranspose uses
    assert held != uuid4()


def test_comparisons_between_parameters_are_pydantics() -> None:
    parameter_versions.install()
    held = WorkParameter(name="center", data=b"14.3")
    assert held == WorkParameter(name="center", data=b"14.3", uuid=held.uuid)
    assert held != WorkParameter(name="center", data=b"14.4", uuid=held.uuid)
    assert held != "center"
