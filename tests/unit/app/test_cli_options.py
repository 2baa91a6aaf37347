"""Options of ``up``, ``play``, ``view`` and the ``--hsds`` of ``demo`` and ``replay``
that are out of range or no URL are argparse's usage error (exit 2, one line naming
the option) before anything starts."""

from __future__ import annotations

import pytest

from streamtomo.app.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # retried for the whole readiness wait (60 s), then "did not start", exit 3
        (["up", "--redis", "garbage"], "argument --redis: not a Redis URL: Redis URL must specify one of"),
        (["up", "--redis", "redis://h:notaport/0"], "argument --redis: not a Redis URL: Port could not be cast"),
        # nan ended every scan after its first frames; a negative value silently meant never
        (["up", "--stream-timeout", "nan"], "argument --stream-timeout: 'nan' is not a finite number"),
        (["up", "--stream-timeout", "-1"], "argument --stream-timeout: -1 is negative"),
        # accepted and played "at nan Hz"
        (["play", "--rate", "0"], "argument --rate: 0 is not above 0"),
        (["play", "--rate", "nan"], "argument --rate: 'nan' is not a finite number"),
        # every request of the page then answered 502, or a traceback per request
        (["view", "--endpoint", "garbage"], "argument --endpoint: 'garbage' is not an http(s)://HOST[:PORT] URL"),
        (["view", "--endpoint", "http://[::1"], "argument --endpoint: 'http://[::1' is not a URL"),
        (["view", "--endpoint", "http://h:1", "--control", "ftp://x"], "argument --control: 'ftp://x' is not an"),
        # a traceback (ftp), or a warning and a scan that published nowhere, exit 0
        (["demo", "--hsds", "ftp://x"], "argument --hsds: 'ftp://x' is not an http(s)://HOST[:PORT] URL"),
        (["replay", "--hsds", "garbage"], "argument --hsds: 'garbage' is not an http(s)://HOST[:PORT] URL"),
    ],
)
def test_an_option_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_redis_url_with_a_password_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--redis", "redis://:s3cret@h:notaport/0"])
    assert "s3cret" not in capsys.readouterr().err


def test_an_hsds_that_does_not_answer_is_refused_before_the_scan(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, refused_url: str
) -> None:
    """The reducer waited 60 s for it, as long as the replay waits for the reducer: the
    run ended "the reducer did not start", with nothing about HSDS."""
    monkeypatch.setenv("STREAMTOMO_HSDS_USERNAME", "writer")
    monkeypatch.setenv("STREAMTOMO_HSDS_PASSWORD", "secret")
    url = refused_url  # nothing listens there
    assert main(["demo", "--rows", "4", "--cols", "8", "--angles", "4", "--hsds", url]) == 2
    assert f"--hsds {url} does not answer ([Errno 111] Connection refused): is HSDS running there?" in (
        capsys.readouterr().err
    )
