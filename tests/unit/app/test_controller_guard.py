"""Which requests the dranspose controller's guard takes for a browser's from another site."""

from __future__ import annotations

import pytest

from streamtomo.app.controller_guard import allowed_origins_from_env, refusal


def _scope(host: str = "127.0.0.1:5000", scheme: str = "http", **headers: str) -> dict[str, object]:
    pairs = [("host", host), *((k.replace("_", "-"), v) for k, v in headers.items())]
    return {"type": "http", "scheme": scheme, "headers": [(k.encode(), v.encode()) for k, v in pairs]}


@pytest.mark.parametrize(
    ("scope", "refused"),
    [
        (_scope(), False),  # the pipeline's clients, curl: no Origin, no Sec-Fetch-Site
        (_scope(origin="http://127.0.0.1:5000"), False),  # the controller's own page
        (_scope(host="[::1]:5000", origin="http://[::1]:5000"), False),
        (_scope(host="localhost:5000", origin="http://localhost:5000", sec_fetch_site="same-origin"), False),
        (_scope(sec_fetch_site="none"), False),  # typed into the address bar
        (_scope(origin="https://evil.example"), True),
        (_scope(origin="null"), True),  # a sandboxed frame, a file:// page
        (_scope(origin="http://127.0.0.1:5001"), True),  # another loopback port is another site
        (_scope(sec_fetch_site="cross-site"), True),
        (_scope(sec_fetch_site="same-site"), True),  # a sibling subdomain may be anyone's
        (_scope(host="evil.example:5000", origin="http://evil.example:5000"), True),  # a rebound name
        (_scope(host="ctl.example", scheme="https", origin="https://ctl.example"), True),
    ],
)
def test_a_browsers_request_from_another_site_is_refused(scope: dict[str, object], refused: bool) -> None:
    assert bool(refusal(scope)) is refused


def test_origins_the_deployment_names_are_its_own() -> None:
    origins = allowed_origins_from_env({"STREAMTOMO_CONTROLLER_ORIGINS": " https://ctl.example , "})
    assert origins == ("https://ctl.example",)
    assert refusal(_scope(host="ctl.example", scheme="https", origin="https://ctl.example"), origins) == ""
