"""The HSDS writer against a real HSDS server (``pip install hsds``), read back with h5pyd 1.0.

The session server comes from :func:`tests.hsds_fixtures.local_hsds`; the restart
test runs its own server because it kills it.
"""

# The local_hsds fixture is imported below (and may also come from conftest), so
# test parameters named after it "redefine" it:

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamtomo.app.local_hsds import LocalHsds
from streamtomo.hsds_bridge.credentials import (
    Credentials,
    CredentialsError,
    load_credentials,
    write_credentials_file,
)
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.hsds_client import HsdsClient
from streamtomo.hsds_bridge.hsds_ids import versioned_name
from streamtomo.hsds_bridge.hsds_writer import HsdsWriter, HsdsWriterError, HsdsWriterSettings
from streamtomo.hsds_bridge.publisher import Publisher
from streamtomo.reducer.domain_layout import new_domain
from tests.support.hsds_fixtures import (
    assert_mirrors,
    hsds_available,
    open_domain,
    unique_domain,
)
from tests.support.publisher_contract import PublisherContract, UrlFor

GEN = "/entry/status/generation"


# -- a small simulated scan ----------------------------------------------------------------
def make_domain(name: str) -> Domain:
    """Layout status datasets plus every kind of dataset and attribute we mirror."""
    domain = new_domain(name)
    domain.create_group(
        "/entry/data",
        {"NX_class": "NXdata", "signal": "vol", "axes": ["z", ".", "."], "ints": [1, 2], "f": 0.5, "ok": True},
    )
    domain.create_dataset(
        "/entry/data/vol", shape=(6, 20, 24), dtype=np.float32, chunks=(2, 8, 24), attrs={"units": "mm"}
    )
    domain.create_dataset("/entry/data/z", np.linspace(0.0, 1.0, 6), attrs={"units": "mm"})
    domain.create_dataset("/entry/data/mask", np.zeros((4, 5), dtype=bool), chunks=(2, 5))
    domain.create_dataset("/entry/data/counts_be", np.zeros(7, dtype=">u2"))
    domain.create_dataset("/entry/data/title", "scan title ✓")
    domain.create_dataset("/entry/data/n", np.int32(0))
    return domain


def update(domain: Domain, step: int, rng: np.random.Generator) -> None:
    """One deterministic reducer update: a z-slab of vol, some scalars, the counter."""
    with domain.lock:
        vol = domain.dataset("/entry/data/vol")
        vol.write((step % 6, slice(None), slice(None)), rng.random((20, 24)))  # float64 into float32
        domain.dataset("/entry/data/mask").write((step % 4, step % 5), True)
        domain.dataset("/entry/data/counts_be").write((step % 7,), step)
        domain.dataset("/entry/data/n").set_scalar(step)
        domain.dataset("/entry/status/state").set_scalar(f"running {step}")
        domain.dataset("/entry/status/projections").set_scalar(step)
        domain.dataset(GEN).set_scalar(np.int64(domain.commit()))


def run_scan(domain: Domain, publisher: Publisher, steps: int, seed: int = 0, pause: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        update(domain, step, rng)
        publisher.notify()
        if pause:
            time.sleep(pause)


def http(server: LocalHsds, method: str, path: str, account: Credentials | None, body: bytes | None = None) -> int:
    """Raw REST request through the proxy; returns the status."""
    req = urllib.request.Request(server.url + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/octet-stream")
    if account is not None:
        req.add_header("Authorization", account.authorization_header())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def dataset_id(server: LocalHsds, name: str, path: str) -> str:
    f = open_domain(server, name, server.accounts.writer)
    try:
        return str(f[path].id.id)
    finally:
        f.close()


@pytest.fixture
def published(local_hsds: LocalHsds) -> tuple[HsdsWriter, Domain]:
    """A domain after 8 updates, published and closed."""
    name = unique_domain(local_hsds, "published")
    domain = make_domain(name)
    writer = HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer)
    writer.start(domain)
    run_scan(domain, writer, 8)
    writer.close()
    return writer, domain


# -- loopback only -------------------------------------------------------------------------
@pytest.mark.hsds
def test_server_listens_on_loopback_only(local_hsds: LocalHsds) -> None:
    sockets = local_hsds.listening_sockets()
    assert sockets, "no TCP listener found"
    assert {addr for _, addr, _ in sockets} == {"127.0.0.1"}, sockets
    assert {port for _, _, port in sockets} == {local_hsds.port}
    local_hsds.assert_loopback_only()
    # The HSDS nodes themselves only have unix sockets, in a directory only we can enter.
    assert local_hsds._socket_dir is not None
    assert stat.S_IMODE(local_hsds._socket_dir.stat().st_mode) == 0o700
    assert {p.name for p in local_hsds._socket_dir.glob("*.sock")} == {"sn_1.sock", "dn_1.sock"}
    for path in (local_hsds.config_dir / "passwd.txt", local_hsds.credentials_file("streamtomo")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.hsds
def test_cors_is_not_open_to_any_origin(local_hsds: LocalHsds) -> None:
    req = urllib.request.Request(local_hsds.url + "/about", headers={"Origin": "https://evil.example"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers.get("Access-Control-Allow-Origin") is None


# -- round trip ----------------------------------------------------------------------------
@pytest.mark.hsds
def test_published_domain_reads_back_equal_as_viewer(
    local_hsds: LocalHsds, published: tuple[HsdsWriter, Domain]
) -> None:
    writer, domain = published
    assert isinstance(writer, Publisher)
    stats = writer.stats()
    assert stats.errors == 0 and stats.dropped_updates == 0 and stats.backlog == 0
    assert stats.updates_published >= 1
    f = open_domain(local_hsds, writer.domain_name, local_hsds.accounts.viewer)
    try:
        assert_mirrors(f, domain)
        assert f[GEN][()] == 8
        assert f["/entry/data/vol"].compression in ("lz4", "gzip")
    finally:
        f.close()


@pytest.mark.hsds
def test_float64_values_go_out_as_float32(local_hsds: LocalHsds) -> None:
    """HSDS stores float64 bytes PUT into a float32 dataset as garbage (answers 200)."""
    name = unique_domain(local_hsds, "dtype")
    domain = new_domain(name)
    ds = domain.create_dataset("/entry/v", shape=(3, 5), dtype=np.float32, chunks=(1, 5))
    big = domain.create_dataset("/entry/big_endian", np.arange(5, dtype=">f4"))
    values = np.array([[np.pi, 1 / 3, 1e-40, -0.0, 1e30]] * 3)  # float64, not exact in float32
    with HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer) as writer:
        writer.start(domain)
        with domain.lock:
            ds.write((slice(None), slice(None)), values)
            big.write((slice(None),), np.arange(5)[::-1] * 1.5)
            domain.dataset(GEN).set_scalar(domain.commit())
        writer.notify()
    f = open_domain(local_hsds, name, local_hsds.accounts.viewer)
    try:
        got = f["/entry/v"][...]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, values.astype(np.float32))
        np.testing.assert_array_equal(f["/entry/big_endian"][...], np.arange(5)[::-1] * 1.5)
    finally:
        f.close()


@pytest.mark.hsds
def test_incremental_updates_send_only_what_changed(local_hsds: LocalHsds) -> None:
    name = unique_domain(local_hsds, "incremental")
    domain = make_domain(name)
    writer = HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer)
    writer.start(domain)
    try:
        run_scan(domain, writer, 3)
        assert writer.wait_idle(30)
        before = writer.stats()
        vol = domain.dataset("/entry/data/vol")
        with domain.lock:
            vol.write((1, 9, slice(None)), np.full(24, 7.0))  # one row of one chunk
            domain.dataset(GEN).set_scalar(domain.commit())
        writer.notify()
        assert writer.wait_idle(30)
        after = writer.stats()
        # one data chunk (delta: that row only) plus the generation
        assert after.extra["chunks_sent"] - before.extra["chunks_sent"] == 2
        assert after.extra["value_puts"] - before.extra["value_puts"] == 2
        assert after.bytes_sent - before.bytes_sent == 24 * 4 + 8
        # nothing changed: nothing sent
        writer.notify()
        assert writer.wait_idle(30)
        assert writer.stats().extra["value_puts"] == after.extra["value_puts"]
    finally:
        writer.close()
    f = open_domain(local_hsds, name, local_hsds.accounts.viewer)
    try:
        assert_mirrors(f, domain)
    finally:
        f.close()


@pytest.mark.hsds
def test_new_and_replaced_datasets_follow(local_hsds: LocalHsds) -> None:
    """Datasets added after start, or replaced with a new shape (new slice set)."""
    name = unique_domain(local_hsds, "structure")
    domain = make_domain(name)
    with HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer) as writer:
        writer.start(domain)
        run_scan(domain, writer, 2)
        with domain.lock:
            domain.create_group("/entry/reconstruction", {"NX_class": "NXdata"})
            domain.create_dataset("/entry/reconstruction/data", np.ones((2, 8, 8), np.float32), chunks=(1, 8, 8))
            domain.dataset(GEN).set_scalar(domain.commit())
        writer.notify()
        assert writer.wait_idle(30)
        with domain.lock:
            domain.create_dataset("/entry/reconstruction/data", np.full((3, 4, 4), 2, np.float32), chunks=(1, 4, 4))
            domain.dataset(GEN).set_scalar(domain.commit())
        writer.notify()
    assert writer.stats().errors == 0
    f = open_domain(local_hsds, name, local_hsds.accounts.viewer)
    try:
        assert_mirrors(f, domain)
    finally:
        f.close()


# -- names ---------------------------------------------------------------------------------
def test_versioned_name() -> None:
    assert versioned_name("/home/a/scan.h5", 2) == "/home/a/scan_v2.h5"
    assert versioned_name("/home/a/scan", 3) == "/home/a/scan_v3"
    assert versioned_name("/home/a.b/x.nxs.h5", 2) == "/home/a.b/x.nxs_v2.h5"


@pytest.mark.hsds
def test_second_scan_with_same_name_gets_a_version(local_hsds: LocalHsds) -> None:
    name = unique_domain(local_hsds, "same")
    writers = []
    for steps in (2, 3):
        domain = make_domain(name)
        with HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer) as writer:
            writer.start(domain)
            run_scan(domain, writer, steps)
        writers.append(writer)
    assert writers[0].domain_name == name
    assert writers[1].domain_name == name.replace(".h5", "_v2.h5")
    gens = []
    for w in writers:
        f = open_domain(local_hsds, w.domain_name, local_hsds.accounts.viewer)
        gens.append(int(f[GEN][()]))
        f.close()
    assert gens == [2, 3]  # the first scan was not touched

    with pytest.raises(HsdsWriterError, match="already exists"):
        HsdsWriter(
            local_hsds.url, name, local_hsds.accounts.writer, settings=HsdsWriterSettings(on_exists="fail")
        ).start(make_domain(name))
    domain = make_domain(name)
    with HsdsWriter(
        local_hsds.url, name, local_hsds.accounts.writer, settings=HsdsWriterSettings(on_exists="overwrite")
    ) as writer:
        writer.start(domain)
        run_scan(domain, writer, 1)
    assert writer.domain_name == name
    f = open_domain(local_hsds, name, local_hsds.accounts.viewer)
    assert int(f[GEN][()]) == 1
    f.close()


# -- rights --------------------------------------------------------------------------------
@pytest.mark.hsds
def test_viewer_cannot_write_and_wrong_password_cannot_read(
    local_hsds: LocalHsds, published: tuple[HsdsWriter, Domain]
) -> None:
    writer, _ = published
    name = writer.domain_name
    accounts = local_hsds.accounts
    dset = dataset_id(local_hsds, name, "/entry/data/n")
    value_path = f"/datasets/{dset}/value?domain={name}"
    body = np.int32(99).tobytes()
    assert http(local_hsds, "GET", value_path, accounts.viewer) == 200
    assert http(local_hsds, "PUT", value_path, accounts.viewer, body) == 403
    assert http(local_hsds, "PUT", f"/acls/viewer?domain={name}", accounts.viewer, b"{}") == 403
    assert http(local_hsds, "DELETE", f"/?domain={name}", accounts.viewer) == 403
    wrong = Credentials("viewer", accounts.viewer.password + "x")
    assert http(local_hsds, "GET", value_path, wrong) == 401
    assert http(local_hsds, "GET", f"/?domain={name}", None) == 401  # no anonymous access
    assert http(local_hsds, "PUT", value_path, accounts.writer, body) == 200

    import h5pyd

    with pytest.raises(OSError, match="permission") as refused:  # h5pyd checks update rights when opening r+
        h5pyd.File(name, "r+", endpoint=local_hsds.url, username="viewer", password=accounts.viewer.password)
    assert refused.value.errno == 403
    with pytest.raises(OSError, match=r"401|Unauthorized"):
        h5pyd.File(name, "r", endpoint=local_hsds.url, username="viewer", password=wrong.password)


@pytest.mark.hsds
def test_writer_with_wrong_password_fails_at_start(local_hsds: LocalHsds) -> None:
    name = unique_domain(local_hsds, "wrongpw")
    bad = Credentials("streamtomo", "not-the-password")
    writer = HsdsWriter(local_hsds.url, name, bad, settings=HsdsWriterSettings(start_timeout=30))
    with pytest.raises(HsdsWriterError, match="401") as info:
        writer.start(make_domain(name))
    assert "not-the-password" not in str(info.value)


# -- faults --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crashable_hsds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHsds]:
    """A server of our own that tests may kill; default write-back (acked data can be lost)."""
    if not hsds_available():
        pytest.skip("hsds not installed")
    server = LocalHsds(tmp_path_factory.mktemp("crash")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.hsds
def test_restart_mid_scan_ends_complete(crashable_hsds: LocalHsds) -> None:
    """Kill HSDS (SIGKILL, whole group) mid-scan, restart on the same root and port."""
    server = crashable_hsds.start()
    port = server.port
    name = unique_domain(server, "restart")
    domain = make_domain(name)
    writer = HsdsWriter(
        server.url, name, server.accounts.writer, settings=HsdsWriterSettings(retry_max=0.5, probe_interval=0.3)
    )
    writer.start(domain)
    rng = np.random.default_rng(1)
    for step in range(30):
        update(domain, step, rng)
        writer.notify()
        if step == 8:
            assert writer.wait_idle(30)
            server.kill()  # acknowledged, most likely not yet flushed
        if step == 20:
            server.start()
            assert server.port == port
        time.sleep(0.02)
    writer.close(timeout=60)
    stats = writer.stats()
    assert stats.extra["reconnects"] >= 1
    assert stats.errors == 0 and stats.dropped_updates == 0
    assert writer.domain_name == name  # reopened, not re-versioned
    # What a reader of the restarted server sees equals the writer's domain and a
    # run without faults (the same seed, never touched by the writer).
    clean = make_domain(name)
    rng = np.random.default_rng(1)
    for step in range(30):
        update(clean, step, rng)
    f = open_domain(server, name, server.accounts.viewer)
    try:
        assert_mirrors(f, domain)
        assert f[GEN][()] == 30
        for path in ("/entry/data/vol", "/entry/data/mask", "/entry/data/counts_be", "/entry/data/n"):
            np.testing.assert_array_equal(f[path][...], clean.dataset(path).array, err_msg=path)
    finally:
        f.close()


def _hold_request(monkeypatch: pytest.MonkeyPatch, writer: HsdsWriter, path: str, answer: Any) -> dict[str, int]:
    """Route the writer's PUTs of ``path``'s value through ``answer(count)``: a status to
    answer instead of sending (the request never reaches HSDS), or None to send it."""
    send = HsdsClient.request
    seen = {"puts": 0}

    async def request(client: HsdsClient, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        setup = writer._setup
        if method == "PUT" and setup is not None and url == f"/datasets/{setup.ids.get(path)}/value":
            seen["puts"] += 1
            status = answer(seen["puts"])
            if status is not None:
                return status, "refused by the test"
        return await send(client, method, url, **kwargs)

    monkeypatch.setattr(HsdsClient, "request", request)
    return seen


def _run_and_close(writer: HsdsWriter, domain: Domain, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        update(domain, step, rng)
        writer.notify()
        assert writer.wait_idle(30)
    writer.close(timeout=60)


@pytest.mark.hsds
@pytest.mark.allow_error_logs  # the refusal is logged at ERROR, as it should be
def test_a_chunk_hsds_refused_once_is_sent_again_before_close_says_complete(
    local_hsds: LocalHsds, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A write HSDS refused (4xx) was counted and dropped, the next generation published,
    and close said complete while HSDS held the older data there."""
    name = unique_domain(local_hsds, "refused-once")
    domain = make_domain(name)
    writer = HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer)
    writer.start(domain)
    # The last update's vol write is refused once (a later one of that chunk would hide it).
    seen = _hold_request(monkeypatch, writer, "/entry/data/vol", lambda n: 403 if n == 6 else None)
    _run_and_close(writer, domain, 6, seed=4)
    assert seen["puts"] >= 7  # refused, then sent again
    assert "HSDS refused PUT /entry/data/vol" in caplog.text
    assert writer.complete
    with open_domain(local_hsds, name, local_hsds.accounts.viewer) as f:
        assert_mirrors(f, domain)


@pytest.mark.hsds
@pytest.mark.allow_error_logs  # refusals and the incomplete domain are errors
def test_a_chunk_hsds_always_refuses_leaves_the_domain_incomplete(
    local_hsds: LocalHsds, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique_domain(local_hsds, "refused-always")
    domain = make_domain(name)
    writer = HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer)
    writer.start(domain)
    _hold_request(monkeypatch, writer, "/entry/data/vol", lambda n: 403 if n >= 6 else None)
    _run_and_close(writer, domain, 6, seed=5)
    assert not writer.complete
    # the refused chunks are named as the reason (one z-slab write spans 3 chunks of vol)
    assert re.search(r"is NOT complete \(0 chunk\(s\) not delivered, [1-9]\d* refused\)", caplog.text), caplog.text
    assert writer.stats().errors >= 2


@pytest.mark.hsds
def test_a_restart_between_the_acknowledgement_and_the_flush_is_seen_and_resent(
    crashable_hsds: LocalHsds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HSDS acknowledged the last vol writes, then was killed and restarted before they
    were flushed: its successor answered the flush, which was believed, and close said
    complete while HSDS held the vol of the update before."""
    server = crashable_hsds.start()
    name = unique_domain(server, "restart-before-flush")
    domain = make_domain(name)
    settings = HsdsWriterSettings(retry_max=0.5, probe_interval=0.3)
    writer = HsdsWriter(server.url, name, server.accounts.writer, settings=settings)
    writer.start(domain)
    rng = np.random.default_rng(6)
    for step in range(4):
        update(domain, step, rng)
        writer.notify()
        assert writer.wait_idle(30)
    time.sleep(2.0)  # flushed: what follows is the only unflushed data
    restarted = {"done": False}

    def restart_before_the_status(n: int) -> None:
        # Between two of the writer's requests: its vol chunks acknowledged, the
        # status next; no request of its fails while the server is away.
        if n == 1 and not restarted["done"]:
            restarted["done"] = True
            server.kill()
            server.start()

    _hold_request(monkeypatch, writer, "/entry/status/state", restart_before_the_status)
    for step in range(4, 8):
        update(domain, step, rng)
    writer.notify()
    assert writer.wait_idle(60)
    writer.close(timeout=60)
    assert restarted["done"]
    assert writer.complete
    with open_domain(server, name, server.accounts.viewer) as f:
        assert_mirrors(f, domain)


@pytest.mark.hsds
def test_backlog_limit_drops_are_counted_and_data_ends_complete(
    local_hsds: LocalHsds, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique_domain(local_hsds, "backlog")
    domain = make_domain(name)
    writer = HsdsWriter(
        local_hsds.url,
        name,
        local_hsds.accounts.writer,
        settings=HsdsWriterSettings(max_backlog_bytes=1, drop_log_every=5),
    )
    writer.start(domain)
    run_scan(domain, writer, 40)  # no pause: the sender is always behind
    writer.close()
    stats = writer.stats()
    assert stats.dropped_updates > 0
    assert any("backlog full" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    f = open_domain(local_hsds, name, local_hsds.accounts.viewer)
    try:
        assert_mirrors(f, domain)
    finally:
        f.close()


# -- credentials ---------------------------------------------------------------------------
def test_credentials_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {"STREAMTOMO_HSDS_USERNAME": "u1", "STREAMTOMO_HSDS_PASSWORD": "secret-1", "HS_USERNAME": "u3"}
    assert load_credentials(env) == Credentials("u1", "secret-1")
    path = write_credentials_file(tmp_path / "cred", Credentials("u2", "secret:2"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials({"STREAMTOMO_HSDS_CREDENTIALS": str(path)}) == Credentials("u2", "secret:2")
    assert load_credentials({"HS_USERNAME": "u3", "HS_PASSWORD": "secret-3"}).username == "u3"
    with pytest.raises(CredentialsError) as info:
        load_credentials({"STREAMTOMO_HSDS_PASSWORD": "secret-4"})
    assert "secret-4" not in str(info.value)
    with pytest.raises(CredentialsError):
        load_credentials({})
    bad = tmp_path / "bad"
    bad.write_text("just-a-secret-5\n")
    with pytest.raises(CredentialsError) as info:
        load_credentials({"STREAMTOMO_HSDS_CREDENTIALS": str(bad)})
    assert "just-a-secret-5" not in str(info.value)
    os.chmod(path, 0o644)
    load_credentials({"STREAMTOMO_HSDS_CREDENTIALS": str(path)})
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    cred = Credentials("u6", "secret-6")
    assert "secret-6" not in repr(cred) and "secret-6" not in str(cred) and "secret-6" not in f"{cred}"


def test_a_password_comes_from_a_file_of_its_own(tmp_path: Path) -> None:
    """The chart mounts a Secret's key as a file: no password in the pods' environment."""
    from streamtomo.app.viewer.server import basic_auth_from_env

    secret = tmp_path / "writer-password"
    secret.write_text("secret-7\n")  # as kubectl create secret --from-file leaves it
    secret.chmod(0o400)
    env = {"STREAMTOMO_HSDS_USERNAME": "u7", "STREAMTOMO_HSDS_PASSWORD_FILE": str(secret)}
    assert load_credentials(env) == Credentials("u7", "secret-7")
    viewer = {"STREAMTOMO_VIEWER_USERNAME": "v7", "STREAMTOMO_VIEWER_PASSWORD_FILE": str(secret)}
    assert basic_auth_from_env(viewer) == "Basic " + base64.b64encode(b"v7:secret-7").decode()
    with pytest.raises(CredentialsError, match="not both"):
        load_credentials({**env, "STREAMTOMO_HSDS_PASSWORD": "secret-8"})
    two = tmp_path / "two"
    two.write_text("secret-9\nsecret-10\n")
    with pytest.raises(CredentialsError, match="the password alone") as info:
        load_credentials({**env, "STREAMTOMO_HSDS_PASSWORD_FILE": str(two)})
    assert "secret-9" not in str(info.value)
    with pytest.raises(CredentialsError, match="cannot read password file"):
        load_credentials({**env, "STREAMTOMO_HSDS_PASSWORD_FILE": str(tmp_path / "missing")})


@pytest.mark.hsds
def test_password_never_logged(local_hsds: LocalHsds, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("hsds_bridge", "aiohttp", "asyncio", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    password = local_hsds.accounts.writer.password
    name = unique_domain(local_hsds, "nolog")
    domain = make_domain(name)
    writer = HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer)
    writer.start(domain)
    run_scan(domain, writer, 3)
    writer.close()
    wrong = HsdsWriter(local_hsds.url, name, Credentials("streamtomo", password + "-wrong"))
    with pytest.raises(HsdsWriterError) as info:
        wrong.start(make_domain(name))
    local_hsds.flush_all()
    texts = [caplog.text, repr(writer), repr(wrong), str(info.value), json.dumps(writer.stats().__dict__)]
    texts += [p.read_text(errors="replace") for p in local_hsds.log_dir.glob("*.log")]
    assert len(caplog.records) > 5
    for text in texts:
        assert password not in text


@pytest.mark.hsds
def test_notify_does_not_block_while_hsds_is_away(crashable_hsds: LocalHsds, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the server gone, notify() makes no request and waits for none; the backlog stays bounded.

    Every request of the writer goes through ``HsdsClient.request``. Once the server is
    killed, the test holds each request there (as a connect to a vanished host hangs)
    until it opens the gate, so a notify() that waited on the network would never
    return while the gate is closed, whatever the machine's speed.
    """
    server = crashable_hsds.start()
    name = unique_domain(server, "away")
    domain = make_domain(name)
    writer = HsdsWriter(server.url, name, server.accounts.writer, settings=HsdsWriterSettings(retry_max=0.2))
    writer.start(domain)
    server.kill()
    gate = threading.Event()
    held = threading.Event()
    requesters: set[str] = set()  # names of the threads that asked for a request
    send = HsdsClient.request

    async def held_request(client: HsdsClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        requesters.add(threading.current_thread().name)
        held.set()
        # Waited for in an executor thread: the writer's loop stays free, as on a slow network.
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 300)
        return await send(client, method, path, **kwargs)

    monkeypatch.setattr(HsdsClient, "request", held_request)
    rng = np.random.default_rng(2)

    def notify_all() -> None:
        for step in range(50):
            update(domain, step, rng)
            writer.notify()

    notifier = threading.Thread(target=notify_all, name="notifier", daemon=True)
    try:
        notifier.start()
        # Generous: 50 notify() calls that wait for nothing take milliseconds; one that
        # waits for a held request never returns before the gate opens.
        notifier.join(60)
        assert not notifier.is_alive(), "notify() blocked while the writer's requests were held (HSDS away)"
        assert held.wait(30), "the writer sent nothing after notify(): the held requests proved nothing"
        assert not gate.is_set()
        assert "notifier" not in requesters, requesters  # no request on the caller's thread
        domain_bytes = sum(d.array.nbytes for d in domain.walk() if hasattr(d, "array"))
        stats = writer.stats()
        assert stats.extra["backlog_bytes"] <= domain_bytes + 4096, (stats, domain_bytes)
        assert stats.backlog >= 1, stats
    finally:
        gate.set()  # the held requests go on (and find the server gone, or back)
    closer = threading.Thread(target=writer.close, kwargs={"timeout": 60})
    closer.start()
    server.start()
    closer.join(70)
    assert not closer.is_alive(), writer.stats()
    assert writer.stats().errors == 0, writer.stats()
    f = open_domain(server, name, server.accounts.viewer)
    try:
        assert_mirrors(f, domain)
    finally:
        f.close()


# -- the shared publisher contract ---------------------------------------------------------
@pytest.mark.hsds
class TestHsdsPublisher(PublisherContract):
    """The contract suite (shared with the in-memory server) against a real HSDS.

    The contract's reader opens domains without credentials; here h5pyd's own
    configuration supplies the viewer account (as ``HS_USERNAME``/``HS_PASSWORD``
    would), since this server refuses anonymous requests.
    """

    @pytest.fixture
    def publisher(self, local_hsds: LocalHsds, monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
        import h5pyd.config

        cfg = h5pyd.config.get_config()  # initialise it before patching its keys
        del cfg
        viewer = local_hsds.accounts.viewer
        monkeypatch.setitem(h5pyd.config.Config._cfg, "hs_username", viewer.username)
        monkeypatch.setitem(h5pyd.config.Config._cfg, "hs_password", viewer.password)
        writer = HsdsWriter(local_hsds.url, None, local_hsds.accounts.writer)
        yield writer
        writer.close()

    @pytest.fixture
    def publisher_url_for(self, publisher: Publisher) -> UrlFor:
        def start(domain: Domain) -> tuple[str, str]:
            publisher.start(domain)
            publisher.notify()
            self.wait_published(publisher)
            assert isinstance(publisher, HsdsWriter)
            return publisher.url, publisher.domain_name  # may be versioned: _v2...

        return start

    def wait_published(self, publisher: Publisher) -> None:
        assert isinstance(publisher, HsdsWriter)
        assert publisher.wait_idle(60)


@pytest.mark.hsds
def test_strided_views_are_published_as_their_values(local_hsds: LocalHsds) -> None:
    """An angle-major sinogram shared as a transposed view (rows, angles, cols), and a
    reversed, stepped view: chunks and diffs follow the view's values, not its memory."""
    rows, angles, cols = 8, 12, 10
    name = unique_domain(local_hsds, "strided")
    domain = new_domain(name)
    storage = np.zeros((angles, rows, cols), np.float32)  # angle-major, as a reducer may keep it
    sino = domain.create_dataset("/entry/sinogram", storage.transpose(1, 0, 2), chunks=(4, 5, cols), share=True)
    backing = np.zeros((rows, 2 * cols), np.float64)
    stepped = domain.create_dataset("/entry/stepped", backing[::-1, ::2], chunks=(3, 4), share=True)
    assert not sino.array.flags.c_contiguous and not stepped.array.flags.c_contiguous
    writer = HsdsWriter(local_hsds.url, name, local_hsds.accounts.writer)
    writer.start(domain)
    rng = np.random.default_rng(3)
    for angle in range(angles):
        with domain.lock:
            storage[angle] = rng.random((rows, cols))  # written through the storage...
            sino.mark_dirty((slice(None), angle, slice(None)))  # ...announced in the view's axes
            backing[angle % rows, (2 * angle) % (2 * cols)] = angle + 0.5
            stepped.mark_all_dirty()
            domain.dataset(GEN).set_scalar(np.int64(domain.commit()))
        writer.notify()
    writer.close()
    assert writer.complete and writer.stats().errors == 0, writer.stats()
    with open_domain(local_hsds, name, local_hsds.accounts.viewer) as f:
        np.testing.assert_array_equal(f["/entry/sinogram"][...], storage.transpose(1, 0, 2))
        np.testing.assert_array_equal(f["/entry/sinogram"][:, 5, :], storage[5])
        np.testing.assert_array_equal(f["/entry/stepped"][...], backing[::-1, ::2])
        assert_mirrors(f, domain)


def test_a_secret_mounted_for_the_pods_group_is_not_called_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kubernetes mounts a Secret 0440 for the pod's fsGroup, which the process is in:
    warning 'chmod 600' about a read-only mount helps nobody (a review saw it at every
    start and token rotation). A group the process is not in is still warned about."""
    from streamtomo.hsds_bridge.control_api import read_token_file

    token = tmp_path / "token"
    token.write_text("t" * 32)
    os.chmod(token, 0o440)
    os.chown(token, -1, os.getgid())
    caplog.clear()
    read_token_file(token)
    load_credentials({"STREAMTOMO_HSDS_USERNAME": "u", "STREAMTOMO_HSDS_PASSWORD_FILE": str(token)})
    assert not [r for r in caplog.records if "chmod 600" in r.getMessage()]
    others = [g for g in range(1, 65535) if g not in {os.getgid(), *os.getgroups()}][:1]
    try:
        os.chown(token, -1, others[0])
    except PermissionError:
        pytest.skip("cannot give the file to another group here (not root)")
    read_token_file(token)
    assert [r for r in caplog.records if "chmod 600" in r.getMessage()]
