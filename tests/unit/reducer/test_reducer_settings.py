"""ReducerSettings from the environment: durations are finite and >= 0, or the reducer
refuses to start naming the variable."""

from __future__ import annotations

import pytest

from streamtomo.reducer.tomo_reducer import ReducerSettings


def test_defaults_and_given_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAMTOMO_STREAM_TIMEOUT", "STREAMTOMO_FINAL_WAIT", "STREAMTOMO_POOL_WAIT"):
        monkeypatch.delenv(name, raising=False)
    assert ReducerSettings.from_env().stream_timeout == 30.0
    monkeypatch.setenv("STREAMTOMO_STREAM_TIMEOUT", "0")  # never
    monkeypatch.setenv("STREAMTOMO_POOL_WAIT", "2.5")
    settings = ReducerSettings.from_env()
    assert (settings.stream_timeout, settings.pool_wait) == (0.0, 2.5)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        # NaN ended every scan after its first frames ("no event for nan s")
        ("STREAMTOMO_STREAM_TIMEOUT", "nan", "STREAMTOMO_STREAM_TIMEOUT='nan': seconds must be finite and >= 0"),
        ("STREAMTOMO_STREAM_TIMEOUT", "-1", "seconds must be finite and >= 0"),  # it meant never, silently
        ("STREAMTOMO_FINAL_WAIT", "inf", "STREAMTOMO_FINAL_WAIT='inf': seconds must be finite"),
        ("STREAMTOMO_POOL_WAIT", "soon", "STREAMTOMO_POOL_WAIT='soon' is not a number of seconds"),
    ],
)
def test_a_duration_that_is_none_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, message: str
) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReducerSettings.from_env()
