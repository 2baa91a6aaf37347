"""Which requests the dranspose controller's guard takes for a browser's from another site."""

from __future__ import annotations

import base64
import hashlib

import pytest

from streamtomo.app.controller_guard import allowed_origins_from_env, refusal
from streamtomo.app.controller_page import PAGE, POLICY, page_policy


def _scope(
    host: str = "127.0.0.1:5000", scheme: str = "http", method: str = "GET", **headers: str
) -> dict[str, object]:
    pairs = [("host", host), *((k.replace("_", "-"), v) for k, v in headers.items())]
    return {
        "type": "http",
        "scheme": scheme,
        "method": method,
        "headers": [(k.encode(), v.encode()) for k, v in pairs],
    }


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


@pytest.mark.parametrize(
    ("scope", "refused"),
    [
        (_scope(method="POST"), False),  # the pipeline's clients, curl
        # The status page shows log lines anyone can put there: its own origin may not change a scan.
        (_scope(method="POST", origin="http://127.0.0.1:5000", sec_fetch_site="same-origin"), True),
        (_scope(method="POST", origin="http://127.0.0.1:5000"), True),
        (_scope(method="POST", sec_fetch_site="same-origin"), True),
        (_scope(method="DELETE", origin="http://localhost:5000", host="localhost:5000"), True),
        # A DNS-rebound name reading the logs and parameters (a same-origin GET sends no Origin).
        (_scope(host="rebound.example:5000", sec_fetch_site="same-origin"), True),
        (_scope(host="rebound.example:5000", sec_fetch_site="none"), True),
        # Chromium sends a rebound page's same-origin read over http with neither header.
        (_scope(host="rebound.example:5000"), True),
        (_scope(host="localhost:5000", sec_fetch_site="same-origin"), False),
        (_scope(host="10.0.0.7:5000", sec_fetch_site="same-origin"), False),
    ],
)
def test_a_browser_page_only_reads_and_only_under_this_controllers_names(
    scope: dict[str, object], refused: bool
) -> None:
    assert bool(refusal(scope)) is refused


def test_a_listed_origin_may_read_not_change() -> None:
    """The Ingress's name: the status page is served there too, with the same log."""
    origins = ("https://ctl.example",)
    post = _scope(host="ctl.example", scheme="https", method="POST", origin="https://ctl.example")
    assert "only read" in refusal(post, origins)
    assert refusal(_scope(host="ctl.example", scheme="https", sec_fetch_site="same-origin"), origins) == ""
    assert refusal(_scope(host="other.example", scheme="https", sec_fetch_site="same-origin"), origins) != ""


def test_the_controllers_names_are_those_it_is_given() -> None:
    """The chart's pods reach the controller by its Service's name."""
    names = frozenset({"t-streamtomo-controller.beamline.svc"})
    pod = _scope(host="t-streamtomo-controller.beamline.svc:5000", method="POST")
    assert refusal(pod, (), names) == ""
    assert "not a name of this controller" in refusal(pod)
    assert refusal(_scope(host="", method="POST"), (), names) != ""  # no Host: no name


def test_the_status_page_runs_its_own_script_by_hash_and_nothing_inline() -> None:
    script = "\nfetch('/api/v1/logs');\n"
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = page_policy(f"<html><body><script>{script}</script></body></html>")
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == f"'sha256-{digest}'"  # no 'unsafe-inline': no injected onerror
    assert directives["style-src"] == "'none'"  # no injected style either
    assert directives["form-action"] == "'none'" and directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert "script-src 'none'" in page_policy("<html>no script</html>")


def test_the_status_page_shows_text_never_markup() -> None:
    """dranspose's page wrote log lines with innerHTML: a planted meta refresh sent
    whoever opened it to another site, under any script policy."""
    assert "innerHTML" not in PAGE and "insertAdjacentHTML" not in PAGE and "document.write" not in PAGE
    assert PAGE.count("textContent") >= 2
    assert page_policy(PAGE) == POLICY and "'unsafe-inline'" not in POLICY
