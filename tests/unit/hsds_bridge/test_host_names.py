"""The names no other site can be, as the Host checks and the controller's origin check read them."""

from __future__ import annotations

import pytest

from streamtomo.hsds_bridge.host_names import known_host, local_or_address


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("10.0.0.7", True),
        ("::1", True),  # urlsplit's hostname: no brackets
        ("[::1]", True),
        ("fe80::1%eth0", False),  # a zone: "[::1%25evil.example]" names no address of ours
        ("::1%25evil.example", False),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_localhost_and_unzoned_addresses_are_ours(name: str, ours: bool) -> None:
    assert local_or_address(name) is ours


@pytest.mark.parametrize(
    ("host", "known"),
    [
        ("localhost:8100", True),
        ("[::1]:8100", True),
        ("192.168.1.5", True),
        ("beamline.example:8100", True),  # a name it was given
        ("Beamline.Example.", True),
        ("evil.example:8100", False),
        ("[::1%25evil.example]:8100", False),
        ("::1", False),  # not a Host header: an IPv6 address there has brackets
        ("a b:80", False),
    ],
)
def test_a_host_header_names_the_server_by_its_names_or_an_address(host: str, known: bool) -> None:
    assert known_host(host, frozenset({"beamline.example"})) is known
