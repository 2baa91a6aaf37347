"""Parameter files: the JSON object, dranspose's list, the controller's recorded CBOR."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cbor2
import pytest

from streamtomo.app.parameter_files import (
    ParameterFileError,
    load_config,
    read_config_values,
    write_parameter_file,
)
from streamtomo.pipeline.config import ConfigError, PipelineConfig


def test_written_file_reads_back(tmp_path: Path) -> None:
    config = PipelineConfig(n_projections=90, center="auto", volume=False)
    path = write_parameter_file(config, tmp_path / "parameters.json")
    assert load_config(path) == config
    assert load_config(path, {"domain": "/x.h5", "filter": None}) == PipelineConfig(
        n_projections=90, center="auto", volume=False, domain="/x.h5"
    )


def test_object_list_and_recorded_cbor(tmp_path: Path) -> None:
    (tmp_path / "object.json").write_text(json.dumps({"n_projections": 12}))
    assert read_config_values(tmp_path / "object.json") == {"n_projections": 12}
    # The controller's recordings hold dranspose's own parameters too, binary ones as bytes.
    entries = [
        {"name": "n_projections", "data": b"12"},
        {"name": "references", "data": b"\x00\x01"},
        {"name": "dump_prefix", "data": b"/tmp/x"},
        {"name": "center", "value": "3"},
    ]
    (tmp_path / "parameters.cbor").write_bytes(cbor2.dumps(entries))
    assert read_config_values(tmp_path / "parameters.cbor") == {"n_projections": "12", "center": "3"}
    assert load_config(tmp_path / "parameters.cbor").n_projections == 12


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParameterFileError, match="cannot read parameter file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ParameterFileError, match=r"bad.json is not JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "number.json").write_text("3")
    with pytest.raises(ParameterFileError, match="expected a JSON object or a dranspose parameter list"):
        load_config(tmp_path / "number.json")
    (tmp_path / "typo.json").write_text(json.dumps([{"name": "n_projection", "data": "3"}]))
    with pytest.raises(ConfigError, match=r"unknown configuration keys \['n_projection'\]"):
        load_config(tmp_path / "typo.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "p.cbor is empty: expected a CBOR parameter list"),
        # A copy cut part-way: cbor2's CBORDecodeEOF, an EOFError, was a traceback.
        (cbor2.dumps([{"name": "n_projections", "data": b"12"}])[:-3], "p.cbor is cut short"),
        # A tag whose value its decoder refuses.
        (cbor2.dumps(cbor2.CBORTag(30, "x")), "p.cbor does not decode as CBOR: "),
        # Binary parameters are text: bytes that are not UTF-8 named no file.
        (cbor2.dumps([{"name": "center", "data": b"\xff\xfe"}]), "p.cbor: parameter 'center' is not UTF-8 text"),
    ],
    ids=["empty", "cut", "bad tag", "not utf-8"],
)
def test_a_cbor_file_that_does_not_decode_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "p.cbor"
    path.write_bytes(content)
    with pytest.raises(ParameterFileError, match=re.escape(message)):
        read_config_values(path)
    with pytest.raises(ParameterFileError, match=re.escape(message)):
        load_config(path)


@pytest.mark.parametrize("content", [b"", cbor2.dumps([{"name": "center", "data": "3"}])[:-2]], ids=["empty", "cut"])
def test_check_of_an_empty_or_cut_cbor_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """``streamtomo check empty.cbor``: a CBORDecodeEOF traceback (exit 1)."""
    from streamtomo.app.cli import main

    path = tmp_path / "p.cbor"
    path.write_bytes(content)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"streamtomo: error: {path} is "), err
    assert "Traceback" not in err
