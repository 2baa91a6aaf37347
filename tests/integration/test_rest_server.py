"""The in-memory HDF REST server, read with real h5pyd 1.0 and raw HTTP (no mocks)."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import h5pyd
import numpy as np
import numpy.typing as npt
import pytest
import requests

from streamtomo.hsds_bridge import rest_app
from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.publisher import Publisher
from streamtomo.hsds_bridge.rest_ids import make_id, node_id, parse_id
from streamtomo.hsds_bridge.rest_registry import Limits
from streamtomo.hsds_bridge.rest_select import Selection, extract, parse_points, parse_select
from streamtomo.hsds_bridge.rest_server import HdfRestServer
from tests.support.publisher_contract import PublisherContract, as_python, make_scan_domain, open_file

if TYPE_CHECKING:  # the tests import the app layer where they use it
    from streamtomo.app.scan_outcome import ScanOutcome

SINO = "/entry/data/sinogram"


class TestInMemoryPublisher(PublisherContract):
    @pytest.fixture
    def publisher(self) -> Iterator[Publisher]:
        with HdfRestServer() as server:
            yield server


@pytest.fixture
def domain() -> Domain:
    return make_scan_domain("/home/streamtomo/demo.h5")


@pytest.fixture
def server(domain: Domain) -> Iterator[HdfRestServer]:
    with HdfRestServer(cors_origins=["http://viewer.example"]) as srv:
        srv.start(domain)
        yield srv


def get(
    server: HdfRestServer, path: str, domain: str | None = "/home/streamtomo/demo.h5", **kw: Any
) -> requests.Response:
    params = dict(kw.pop("params", {}))
    if domain is not None:
        params["domain"] = domain
    return requests.get(server.url + path, params=params, timeout=10, **kw)


def dataset_id(domain: Domain, path: str) -> str:
    """A dataset's id: it depends on the dataset's shape and dtype, not only its path."""
    return node_id(domain.name, domain.dataset(path))


def sino_id(domain: Domain) -> str:
    return dataset_id(domain, SINO)


# -- protocol, lifecycle, ids ---------------------------------------------------------
def test_publisher_protocol_and_clean_close(domain: Domain) -> None:
    server = HdfRestServer()
    assert isinstance(server, Publisher)
    server.start(domain)
    assert server.url.startswith("http://127.0.0.1:")
    assert requests.get(server.url + "/about", timeout=5).json()["state"] == "READY"
    server.notify()
    assert server.stats().updates_published == 1
    server.close()
    assert not any(t.name == "hdf-rest-server" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/about", timeout=2)
    server.close()  # idempotent


def test_ids_look_like_hsds_and_survive_a_restart(domain: Domain) -> None:
    roots = []
    for _ in range(2):
        with HdfRestServer() as srv:
            srv.start(domain)
            body = get(srv, "/").json()
            assert body["class"] == "domain" and body["owner"]
            roots.append(body["root"])
            links = get(srv, f"/groups/{body['root']}/links").json()["links"]
            assert [(link["title"], link["collection"]) for link in links] == [("entry", "groups")]
            assert parse_id(links[0]["id"]) == "groups"
    assert roots[0] == roots[1]
    assert parse_id(roots[0]) == "groups" and roots[0].startswith("g-")
    assert parse_id(sino_id(domain)) == "datasets"


def test_several_domains_and_folder_listing(server: HdfRestServer) -> None:
    other = Domain("/demo2.h5")
    other.create_dataset("/x", np.arange(5, dtype=np.int32))
    server.start(other)
    with open_file(server.url, "/demo2.h5") as f:
        np.testing.assert_array_equal(f["x"][:], np.arange(5))
    top = get(server, "/domains", domain=None).json()["domains"]
    assert {(d["name"], d["class"]) for d in top} == {("/demo2.h5", "domain"), ("/home", "folder")}
    sub = get(server, "/domains", domain="/home/streamtomo/").json()["domains"]
    assert [d["name"] for d in sub] == ["/home/streamtomo/demo.h5"]
    assert get(server, "/", domain="/home/streamtomo").json()["class"] == "folder"
    folder = h5pyd.Folder("/home/streamtomo/", endpoint=server.url)
    assert list(folder) == ["demo.h5"]
    folder.close()


def test_acls_are_read_only(server: HdfRestServer) -> None:
    with open_file(server.url, "/home/streamtomo/demo.h5") as f:
        acl = f.getACL("anyone")
        assert acl["read"] and acl["readACL"]
        assert not (acl["update"] or acl["create"] or acl["delete"] or acl["updateACL"])
        assert [a["userName"] for a in f.getACLs()] == ["default"]


# -- h5pyd reads ------------------------------------------------------------------------
def test_groups_links_and_nexus_attributes(server: HdfRestServer) -> None:
    with open_file(server.url, "/home/streamtomo/demo.h5") as f:
        assert list(f) == ["entry"]
        assert f.attrs["NX_class"] == "NXroot"
        data = f["entry/data"]
        assert data.attrs["signal"] == "sinogram"
        assert as_python(data.attrs["axes"]) == ["rotation_angle", ".", "."]
        assert data.attrs["rotation_angle_indices"] == 0
        assert sorted(data) == ["rotation_angle", "sinogram"]
        ds = data["sinogram"]
        assert ds.dtype == np.float32 and ds.chunks == (4, 16, 24)
        assert ds.attrs["units"] == "counts"


def test_float32_full_hyperslab_strided_and_fancy_reads(server: HdfRestServer, domain: Domain) -> None:
    expected = domain.dataset(SINO).array.copy()
    with open_file(server.url, domain.name) as f:
        ds = f[SINO]
        np.testing.assert_array_equal(ds[...], expected)
        np.testing.assert_array_equal(ds[2:7, 3:12], expected[2:7, 3:12])
        np.testing.assert_array_equal(ds[1:11:4, ::3, 5:23:6], expected[1:11:4, ::3, 5:23:6])
        np.testing.assert_array_equal(ds[:, [1, 4, 9], 2], expected[:, [1, 4, 9], 2])
        np.testing.assert_array_equal(ds[5, :, [0, 3, 7]], expected[5][:, [0, 3, 7]])
        # point selections: h5pyd POSTs the coordinates as binary uint64
        np.testing.assert_array_equal(ds[[1, 4, 8], [2, 3, 0], [5, 6, 23]], expected[[1, 4, 8], [2, 3, 0], [5, 6, 23]])
        np.testing.assert_array_equal(ds[[0, 11], 2, 3], expected[[0, 11], 2, 3])
        angles = f["/entry/data/rotation_angle"]
        np.testing.assert_array_equal(angles[[1, 5, 7]], domain.dataset("/entry/data/rotation_angle").array[[1, 5, 7]])


def test_long_fancy_selection_goes_through_post(server: HdfRestServer, domain: Domain) -> None:
    """h5pyd POSTs a select longer than 100 characters as an untyped JSON body."""
    wide = domain.create_dataset("/entry/wide", np.arange(4 * 300, dtype=np.int32).reshape(4, 300))
    columns = list(range(0, 300, 3))
    with open_file(server.url, domain.name) as f:
        np.testing.assert_array_equal(f["/entry/wide"][1:3, columns], wide.array[1:3, columns])
        np.testing.assert_array_equal(f["/entry/wide"][2, columns], wide.array[2, columns])


def test_scalars_strings_ints_bools(server: HdfRestServer) -> None:
    with open_file(server.url, "/home/streamtomo/demo.h5") as f:
        assert f["/entry/status/state"].asstr()[()] == "running"
        assert f["/entry/status/frames_received"][()] == 0
        assert f["/entry/status/frames_received"].dtype == np.int64
        np.testing.assert_array_equal(f["/entry/valid"][:], np.ones(12, dtype=bool))
        assert f["/entry/detector"][:].tolist() == [b"eiger", b"pco.edge"]
        np.testing.assert_array_equal(f["/entry/frame_index"][:], np.arange(12) - 3)


def test_live_values_but_cached_metadata(server: HdfRestServer, domain: Domain) -> None:
    """Values are re-read per request; metadata is cached by h5pyd per File."""
    with open_file(server.url, domain.name) as f:
        ds = f[SINO]
        with domain.lock:
            domain.dataset(SINO).write((0,), 42.0)
            domain.dataset("/entry/status/state").set_scalar("done")
        domain.commit()
        assert float(ds[0, 0, 0]) == 42.0
        assert f["/entry/status/state"].asstr()[()] == "done"
        domain.create_dataset("/entry/late", np.arange(3))
        assert "late" not in f["/entry"]  # h5pyd caches links: reopen to see new nodes
    with open_file(server.url, domain.name) as fresh:
        np.testing.assert_array_equal(fresh["/entry/late"][:], np.arange(3))


def test_h5pyd_without_consolidated_metadata(domain: Domain) -> None:
    """The per-object path (GET /groups/{id}?include_links&include_attrs)."""
    with HdfRestServer(serve_domain_objs=False) as srv:
        srv.start(domain)
        with open_file(srv.url, domain.name) as f:
            assert as_python(f["entry/data"].attrs["axes"]) == ["rotation_angle", ".", "."]
            np.testing.assert_array_equal(f[SINO][3], domain.dataset(SINO).array[3])


# -- raw REST (h5web, browsers) ------------------------------------------------------------
def test_json_and_binary_values(server: HdfRestServer, domain: Domain) -> None:
    expected = domain.dataset(SINO).array
    url = f"/datasets/{sino_id(domain)}/value"
    body = get(server, url, params={"select": "[2,1:3,:]"}).json()
    # like HSDS, an index keeps its axis in JSON (h5web flattens)
    np.testing.assert_array_equal(np.asarray(body["value"], dtype=np.float32), expected[2:3, 1:3, :])
    raw = get(server, url, params={"select": "[0:2,0:16,0:24:2]"}, headers={"Accept": "application/octet-stream"})
    assert raw.headers["Content-Type"] == "application/octet-stream"
    got = np.frombuffer(raw.content, dtype="<f4").reshape(2, 16, 12)
    np.testing.assert_array_equal(got, expected[0:2, :, ::2])
    points = requests.post(
        server.url + url, params={"domain": domain.name}, json={"points": [[1, 2, 3], [4, 5, 6]]}, timeout=5
    ).json()["value"]
    assert points == [float(expected[1, 2, 3]), float(expected[4, 5, 6])]
    scalar = get(server, f"/datasets/{dataset_id(domain, '/entry/status/state')}/value").json()
    assert scalar["value"] == "running"


def test_what_the_writer_has_not_written_reads_as_zeros_in_every_selection(
    server: HdfRestServer, domain: Domain
) -> None:
    """A dataset in reused memory (the next scan's sinogram) says which positions are
    not its own yet: hyperslabs, strided and fancy reads and points all see zeros
    there, and the memory is left as it is."""
    data = domain.dataset(SINO)
    held = data.array.copy()
    unwritten = np.zeros(data.shape[1], dtype=bool)
    unwritten[[1, 4, 5]] = True
    data.unwritten = unwritten[np.newaxis, :, np.newaxis]
    expected = np.where(data.unwritten, 0.0, held).astype(np.float32)
    url = f"/datasets/{sino_id(domain)}/value"
    binary = {"Accept": "application/octet-stream"}
    whole = get(server, url, headers=binary)
    np.testing.assert_array_equal(np.frombuffer(whole.content, dtype="<f4").reshape(data.shape), expected)
    strided = get(server, url, params={"select": "[0:2,0:16:3,0:24:2]"}, headers=binary)
    np.testing.assert_array_equal(
        np.frombuffer(strided.content, dtype="<f4").reshape(2, 6, 12), expected[0:2, 0:16:3, ::2]
    )
    fancy = get(server, url, params={"select": "[1,[0,1,4,9],:]"}).json()["value"]
    np.testing.assert_array_equal(np.asarray(fancy, dtype=np.float32), expected[1:2, [0, 1, 4, 9], :])
    points = requests.post(
        server.url + url, params={"domain": domain.name}, json={"points": [[1, 1, 3], [4, 2, 6], [0, 5, 0]]}, timeout=5
    ).json()["value"]
    assert points == [0.0, float(held[4, 2, 6]), 0.0]
    np.testing.assert_array_equal(data.array, held)


def test_h5web_style_metadata(server: HdfRestServer, domain: Domain) -> None:
    group = get(server, f"/groups/{make_id(domain.name, 'groups', '/entry/data')}").json()
    assert group["linkCount"] == 2 and group["attributeCount"] == 4
    ds = get(server, f"/datasets/{sino_id(domain)}").json()
    assert ds["shape"]["dims"] == [12, 16, 24] and ds["type"]["base"] == "H5T_IEEE_F32LE"
    assert ds["creationProperties"]["layout"] == {"class": "H5D_CHUNKED", "dims": [4, 16, 24]}
    gid = make_id(domain.name, "groups", "/entry/data")
    names = [a["name"] for a in get(server, f"/groups/{gid}/attributes").json()["attributes"]]
    assert "axes" in names
    axes = get(server, f"/groups/{gid}/attributes/axes").json()
    assert axes["value"] == ["rotation_angle", ".", "."] and axes["shape"]["dims"] == [3]
    batch = requests.post(
        f"{server.url}/groups/{gid}/attributes",
        params={"domain": domain.name},
        json={"attr_names": ["signal"]},
        timeout=5,
    )
    assert batch.json()["attributes"][0]["value"] == "sinogram"
    link = get(server, f"/groups/{gid}/links/sinogram").json()["link"]
    assert link["id"] == sino_id(domain)
    assert get(server, f"/datasets/{sino_id(domain)}/shape").json()["shape"]["dims"] == [12, 16, 24]
    assert get(server, f"/datasets/{sino_id(domain)}/type").json()["type"]["class"] == "H5T_FLOAT"
    domain_json = get(server, "/", params={"verbose": 1}).json()
    assert domain_json["num_datasets"] == 9
    via_header = requests.get(server.url + "/", headers={"X-Hdf-domain": domain.name}, timeout=5)
    assert via_header.json()["root"] == domain_json["root"]


# -- errors ---------------------------------------------------------------------------------
def test_missing_domain_is_404_naming_it(server: HdfRestServer) -> None:
    rsp = get(server, "/", domain="/home/nobody/missing.h5")
    assert rsp.status_code == 404
    assert "/home/nobody/missing.h5" in rsp.json()["message"]
    with pytest.raises(FileNotFoundError):
        open_file(server.url, "/home/nobody/missing.h5")


@pytest.mark.parametrize(
    ("select", "needle"),
    [
        ("[0:2", "look like"),
        ("[0:2,0:3]", "rank"),
        ("[a:2,:,:]", "not an integer"),
        ("[0:2:0,:,:]", "step"),
        ("[12:13,:,:]", "out of range"),
        ("[0,[1,99],:]", "out of range"),
        ("[[1,2],[1],:]", "same length"),
    ],
)
def test_malformed_or_out_of_range_select_is_400(
    server: HdfRestServer, domain: Domain, select: str, needle: str
) -> None:
    rsp = get(server, f"/datasets/{sino_id(domain)}/value", params={"select": select})
    assert rsp.status_code == 400
    assert needle in rsp.json()["message"]
    assert needle in rsp.reason


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('{"points": [[0.7, 1.9, 2.2]]}', "integer coordinates"),  # was read as (0, 1, 2)
        ('{"points": [["1", 1, 2]]}', "integer coordinates"),
        ('{"points": [[true, 1, 2]]}', "integer coordinates"),
        ('{"points": [[1e30, 1, 2]]}', "integer coordinates"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),  # was a 500 (RecursionError)
    ],
)
def test_points_that_are_not_integers_and_json_nested_too_deep_are_400(
    server: HdfRestServer, domain: Domain, body: str, needle: str
) -> None:
    url = f"{server.url}/datasets/{sino_id(domain)}/value"
    rsp = requests.post(url, params={"domain": domain.name}, data=body, timeout=10)
    assert rsp.status_code == 400, rsp.text
    assert needle in rsp.json()["message"]


def test_unknown_and_malformed_ids(server: HdfRestServer) -> None:
    assert get(server, "/datasets/d-00000000-0000-0000-0000-000000000000").status_code == 404
    assert get(server, "/groups/not-an-id").status_code == 400
    assert get(server, "/no/such/endpoint").status_code == 404


def test_writes_are_403(server: HdfRestServer, domain: Domain) -> None:
    params = {"domain": domain.name}
    url = server.url
    assert requests.put(url + "/", params=params, timeout=5).status_code == 403
    assert requests.delete(url + "/", params=params, timeout=5).status_code == 403
    assert (
        requests.put(f"{url}/datasets/{sino_id(domain)}/value", params=params, data=b"x", timeout=5).status_code == 403
    )
    rsp = requests.post(url + "/groups", params=params, json={}, timeout=5)
    assert rsp.status_code == 403 and "read-only" in rsp.json()["message"]
    with pytest.raises(OSError, match="403"):
        h5pyd.File(domain.name, "a", endpoint=url)
    with open_file(url, domain.name) as f:  # nothing changed
        np.testing.assert_array_equal(f[SINO][0], domain.dataset(SINO).array[0])


def test_too_large_is_413(domain: Domain) -> None:
    with HdfRestServer(limits=Limits(max_response_bytes=4096, max_json_bytes=1024)) as srv:
        srv.start(domain)
        url = f"/datasets/{sino_id(domain)}/value"
        assert get(srv, url, headers={"Accept": "application/octet-stream"}).status_code == 413
        assert get(srv, url, params={"select": "[0,0:16,0:24]"}).status_code == 413  # JSON cap
        small = get(srv, url, params={"select": "[0,0:16,0:24]"}, headers={"Accept": "application/octet-stream"})
        assert small.status_code == 200 and len(small.content) == 16 * 24 * 4


def test_cors(server: HdfRestServer, domain: Domain) -> None:
    origin = {"Origin": "http://viewer.example"}
    ok = get(server, "/", headers=origin)
    assert ok.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    missing = get(server, "/", domain="/nope.h5", headers=origin)
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    binary = get(server, f"/datasets/{sino_id(domain)}/value", headers={**origin, "Accept": "application/octet-stream"})
    assert binary.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    assert "Access-Control-Allow-Origin" not in get(server, "/", headers={"Origin": "http://evil.example"}).headers
    preflight = requests.options(
        f"{server.url}/datasets/{sino_id(domain)}/value",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"},
        timeout=5,
    )
    assert preflight.status_code == 204
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    with HdfRestServer(cors_origins=["*"]) as anyone:
        anyone.start(domain)
        assert get(anyone, "/", headers={"Origin": "http://x.example"}).headers["Access-Control-Allow-Origin"] == "*"


# -- concurrency and memory -----------------------------------------------------------------
def test_concurrent_readers_see_whole_chunks_while_writer_updates(server: HdfRestServer, domain: Domain) -> None:
    """The writer fills every chunk with one value per step: a torn read would mix two."""
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0] * 6  # one counter per reader: += from several threads can lose counts

    def writer() -> None:
        step = 0.0
        while not stop.is_set():
            step += 1
            with domain.lock:
                for i in range(3):
                    domain.dataset(SINO).write((slice(4 * i, 4 * i + 4),), step)
            domain.commit()

    def reader(index: int) -> None:
        chunk = index % 3
        try:
            with open_file(server.url, domain.name) as f:
                ds = f[SINO]
                while not stop.is_set():
                    block = ds[4 * chunk : 4 * chunk + 4]
                    assert np.unique(block).size == 1, "torn chunk read"
                    reads[index] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    # Reads for at least 1.5 s and until 30 were made, not for a fixed time: on a loaded
    # machine the readers' setup (h5pyd opens the domain) could take most of 1.5 s.
    started = time.monotonic()
    while (time.monotonic() - started < 1.5 or sum(reads) <= 30) and time.monotonic() - started < 60 and not failures:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(10)
    assert not failures, failures
    assert sum(reads) > 30


def test_hyperslab_of_large_array_does_not_copy_the_whole_array() -> None:
    big = Domain("/big.h5")
    volume = big.create_dataset("/volume", shape=(64, 1024, 1024), dtype=np.float32, chunks=(1, 1024, 1024))
    volume.array[10:18] = np.arange(8, dtype=np.float32)[:, None, None]  # 256 MiB in all
    slab_bytes = 8 * 1024 * 1024 * 4  # 32 MiB
    with HdfRestServer() as srv:
        srv.start(big)
        url = f"{srv.url}/datasets/{dataset_id(big, '/volume')}/value"
        params = {"domain": big.name, "select": "[10:18,0:1024,0:1024]"}
        tracemalloc.start()
        try:
            received = 0
            with requests.get(
                url, params=params, headers={"Accept": "application/octet-stream"}, stream=True, timeout=30
            ) as rsp:
                assert rsp.status_code == 200
                for piece in rsp.iter_content(1 << 20):
                    if received == 0:
                        assert np.frombuffer(piece[:4], dtype="<f4")[0] == 0.0
                    received += len(piece)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert received == slab_bytes
    assert peak < 2 * slab_bytes, f"peak {peak / 2**20:.1f} MiB for a {slab_bytes / 2**20:.0f} MiB slab"


def test_stats_count_traffic(server: HdfRestServer, domain: Domain) -> None:
    get(server, f"/datasets/{sino_id(domain)}/value", headers={"Accept": "application/octet-stream"})
    get(server, "/", domain="/missing.h5")
    stats = server.stats()
    assert stats.bytes_sent >= 12 * 16 * 24 * 4
    assert stats.extra["client_errors"] >= 1 and stats.errors == 0
    assert json.loads(json.dumps(stats.extra))  # plain floats for /entry/status


@pytest.mark.parametrize("select", ["[0:12,0:16,0:24]", "[2,:,:]", "[1:5,[1,2],:]", "[[1,2],[3,4],:]"])
def test_extract_never_returns_a_view_of_the_live_array(select: str) -> None:
    """Serialisation runs after the lock is released: it must read a private copy."""
    live = np.arange(12 * 16 * 24, dtype=np.float32).reshape(12, 16, 24)
    sel = parse_select(select, live.shape)
    block = extract(live, sel)
    assert not np.shares_memory(block, live)
    assert block.flags.c_contiguous and block.shape == sel.shape


# -- bounded cost of reads ---------------------------------------------------
@pytest.mark.parametrize("name", ["/home/streamtomo/demo.h5%00", "/home/streamtomo/demo.h5%0d%0aX: y", "%00"])
def test_control_characters_in_a_domain_name_are_400(server: HdfRestServer, name: str) -> None:
    # Built by hand: requests would re-quote the % signs.
    rsp = requests.get(f"{server.url}/?domain={name}", timeout=5)
    assert rsp.status_code == 400
    assert "control characters" in rsp.json()["message"]
    assert requests.get(f"{server.url}/about", timeout=5).status_code == 200  # still serving


def _stalled_binary_read(url: str) -> tuple[socket.socket, BinaryIO, int]:
    """Ask for ``url`` in binary, read the status and headers only, then stop reading.

    The server is left in the middle of its answer: the body is far larger than what
    the kernel buffers between the two sockets (the small receive buffer keeps it so).
    Returns the socket, its reader (positioned at the body) and the Content-Length.
    """
    parts = urllib.parse.urlsplit(url)
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connect: sets the window
    conn.settimeout(30)  # a server that never answers fails the test instead of hanging it
    conn.connect((parts.hostname, parts.port))
    target = f"{parts.path}?{parts.query}"
    conn.sendall(
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/octet-stream\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    reader = conn.makefile("rb")
    status = reader.readline().split()
    assert status[1] == b"200", status
    length = -1
    while (line := reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == "content-length":
            length = int(value)
    return conn, reader, length


def test_parallel_large_reads_do_not_stall_small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small reads (``/about``, one scalar) are answered while large reads are in progress.

    The test holds each large read in progress itself, so nothing depends on how fast
    the machine is: first inside its copy out of the array (a gate in ``extract``,
    which runs under ``domain.lock`` in the read pool), then while it streams its
    answer to clients that stop reading. A small read that had to wait for either
    would never be answered before the test lets go. JSON values are capped far
    lower than binary (413 at once).
    """
    big = Domain("/home/streamtomo/big.h5")
    rng = np.random.default_rng(0)
    data = rng.random((128, 256, 256), dtype=np.float32)
    big.create_dataset("/entry/sinogram", data)
    big.create_dataset("/entry/generation", np.int64(7))
    other = Domain("/home/streamtomo/other.h5")  # not locked by big's copy
    other.create_dataset("/entry/generation", np.int64(8))

    copy = extract  # the function rest_app copies with (imported there from rest_select)
    copying = threading.Event()
    gate = threading.Event()

    def held_copy(array: npt.NDArray[Any], sel: Selection) -> npt.NDArray[Any]:
        if array.nbytes > Limits().large_read_bytes and not gate.is_set():
            copying.set()
            gate.wait(120)  # bounded: a test that fails still ends
        return copy(array, sel)

    monkeypatch.setattr(rest_app, "extract", held_copy)
    with HdfRestServer() as srv:
        srv.start(big)
        srv.start(other)
        query = f"?domain={big.name}"
        sino = f"{srv.url}/datasets/{dataset_id(big, '/entry/sinogram')}/value{query}"
        scalar = f"{srv.url}/datasets/{dataset_id(big, '/entry/generation')}/value{query}"
        other_scalar = f"{srv.url}/datasets/{dataset_id(other, '/entry/generation')}/value?domain={other.name}"
        json_rsp = requests.get(sino, timeout=60)
        assert json_rsp.status_code == 413 and "octet-stream" in json_rsp.json()["message"]

        # 1. A large read held in its copy: the event loop and the rest of the pool serve on.
        results: list[tuple[int, int]] = []

        def large() -> None:
            rsp = requests.get(sino, headers={"Accept": "application/octet-stream"}, timeout=120)
            results.append((rsp.status_code, len(rsp.content)))

        reader = threading.Thread(target=large, daemon=True)
        try:
            reader.start()
            assert copying.wait(30), "the large read never reached its copy"
            for _ in range(5):
                # A timeout (requests raises) is the failure: the small read waited for the copy.
                assert requests.get(f"{srv.url}/about", timeout=10).status_code == 200
                assert requests.get(other_scalar, timeout=10).json()["value"] == 8
            assert reader.is_alive() and not results, "the large read was not in progress"
        finally:
            gate.set()
        reader.join(60)
        assert results == [(200, data.nbytes)], results

        # 2. Two large reads held while they stream their answers (the per-client limit).
        stalled: list[tuple[socket.socket, BinaryIO, int]] = []
        try:
            for _ in range(Limits().large_reads_per_client):
                stalled.append(_stalled_binary_read(sino))
                assert stalled[-1][2] == data.nbytes
                for _ in range(5):
                    assert requests.get(f"{srv.url}/about", timeout=10).status_code == 200
                    assert requests.get(scalar, timeout=10).json()["value"] == 7
            # Only now are the bodies read: all of them were still to come.
            for _, body, length in stalled:
                assert np.array_equal(np.frombuffer(body.read(length), np.float32).reshape(data.shape), data)
        finally:
            for conn, body, _ in stalled:
                body.close()
                conn.close()


# -- replaced datasets, queries, large JSON, paging, h5path, ignore_nan ---------------------
@pytest.mark.parametrize(
    "replace",
    [
        lambda d: d.create_dataset(SINO, np.zeros((16, 12, 24), np.float32)),  # as many values, another shape
        lambda d: d.create_dataset(SINO, np.zeros((12, 16, 24), np.float64)),  # another dtype
        lambda d: setattr(d.dataset(SINO), "array", np.zeros((20, 16, 24), np.float32)),  # the array swapped
    ],
    ids=["shape", "dtype", "array-swapped"],
)
def test_a_reader_of_a_replaced_dataset_gets_410_not_the_new_values_in_the_old_shape(
    server: HdfRestServer, domain: Domain, replace: Any
) -> None:
    old_id = sino_id(domain)
    with open_file(server.url, domain.name) as f:
        held = f[SINO]  # h5pyd keeps id, shape and dtype
        with domain.lock:
            replace(domain)
            domain.commit()
        with pytest.raises(OSError, match="410"):
            held[0]
    answer = get(server, f"/datasets/{old_id}/value")
    assert answer.status_code == 410
    assert "replaced" in answer.json()["message"] and "reopen" in answer.json()["message"]
    assert get(server, f"/datasets/{old_id}").status_code == 410
    with open_file(server.url, domain.name) as f:  # reopened: the new dataset
        assert f[SINO].shape == domain.dataset(SINO).shape and f[SINO].dtype == domain.dataset(SINO).dtype
        np.testing.assert_array_equal(f[SINO][0], domain.dataset(SINO).array[0])


def test_query_and_fields_are_400_not_every_value(server: HdfRestServer, domain: Domain) -> None:
    url = f"/datasets/{dataset_id(domain, '/entry/frame_index')}/value"
    for params in ({"query": "frame_index > 5"}, {"fields": "a:b"}, {"query": "x > 1", "Limit": "2"}):
        answer = get(server, url, params=params)
        assert answer.status_code == 400, params
        assert "not supported by this server" in answer.json()["message"]
    posted = requests.post(
        server.url + url, params={"domain": domain.name}, json={"select": "[0:4]", "query": "x > 1"}, timeout=5
    )
    assert posted.status_code == 400
    with open_file(server.url, domain.name) as f, pytest.raises(OSError, match="400"):
        f["/entry/frame_index"].__getitem__(slice(None), query="frame_index > 5")


def test_json_serves_a_2048_square_float32_slice_as_h5web_asks_for_it() -> None:
    """h5web's HsdsProvider reads values as JSON (no Accept header) with select=[i,:,:]."""
    big = Domain("/big.h5")
    image = np.arange(2048 * 2048, dtype=np.float32).reshape(1, 2048, 2048) / 7
    image[0, 0, :3] = [np.nan, np.inf, -np.inf]
    big.create_dataset("/img", np.concatenate([image, image + 1]), chunks=(1, 2048, 2048))
    with HdfRestServer() as srv:
        srv.start(big)
        answer = get(srv, f"/datasets/{dataset_id(big, '/img')}/value", domain=big.name, params={"select": "[0,:,:]"})
        assert answer.status_code == 200, answer.text[:200]
        assert answer.headers["Content-Type"].startswith("application/json")
        got = json.loads(answer.content)["value"]
        assert got[0][0][:3] == ["NaN", "Infinity", "-Infinity"]
        got[0][0][:3] = [0, 0, 0]
        image[0, 0, :3] = 0
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), image)
        too_big = get(
            srv, f"/datasets/{dataset_id(big, '/img')}/value", domain=big.name, params={"select": "[0:2,:,:]"}
        )
        assert too_big.status_code == 413  # two slices: over the JSON cap, fine in binary


def test_ignore_nan_answers_null_for_nan_and_infinities(server: HdfRestServer, domain: Domain) -> None:
    with domain.lock:
        domain.create_dataset("/entry/odd", np.array([1.0, np.nan, np.inf, -np.inf], np.float32))
    url = f"/datasets/{dataset_id(domain, '/entry/odd')}/value"
    assert get(server, url, params={"ignore_nan": "1"}).json()["value"] == [1.0, None, None, None]
    assert get(server, url).json()["value"] == [1.0, "NaN", "Infinity", "-Infinity"]


def test_links_are_paged_and_filtered_as_hsds_does(server: HdfRestServer, domain: Domain) -> None:
    url = f"/groups/{make_id(domain.name, 'groups', '/entry')}/links"

    def titles(**params: str) -> list[str]:
        answer = get(server, url, params=params)
        assert answer.status_code == 200, answer.text
        return [link["title"] for link in answer.json()["links"]]

    everything = sorted(domain.get("/entry").children)  # type: ignore[union-attr]
    assert titles() == everything
    assert titles(Limit="2") == everything[:2]
    assert titles(Marker=everything[1], Limit="2") == everything[2:4]
    assert titles(Marker=everything[-1]) == []
    assert titles(pattern="d*") == [t for t in everything if t.startswith("d")]
    assert get(server, url, params={"Marker": "nothing-like-it"}).status_code == 404
    assert get(server, url, params={"Limit": "many"}).status_code == 400


def test_domains_are_paged_so_h5pyd_folders_end(server: HdfRestServer) -> None:
    for name in ("/home/streamtomo/b.h5", "/home/streamtomo/c.h5", "/home/streamtomo/sub/d.h5"):
        server.start(Domain(name))

    def names(**params: str) -> list[str]:
        return [d["name"] for d in get(server, "/domains", domain="/home/streamtomo/", params=params).json()["domains"]]

    everything = ["/home/streamtomo/b.h5", "/home/streamtomo/c.h5", "/home/streamtomo/demo.h5", "/home/streamtomo/sub"]
    assert names() == everything
    assert names(Limit="2") == everything[:2]
    assert names(Limit="2", Marker=everything[1]) == everything[2:]
    assert names(Marker=everything[-1]) == []
    assert names(pattern="*.h5") == everything[:3]
    for batch in (1, 2, 4):  # 4: exactly one full batch, then an empty one
        folder = h5pyd.Folder("/home/streamtomo/", endpoint=server.url, username=None, password=None, batch_size=batch)
        assert list(itertools.islice(iter(folder), 10)) == ["b.h5", "c.h5", "demo.h5", "sub"], batch


def test_h5path_on_groups_is_resolved_or_refused_never_another_object(server: HdfRestServer, domain: Domain) -> None:
    def gid(path: str) -> str:
        return make_id(domain.name, "groups", path)

    def group(url: str, h5path: str) -> requests.Response:
        return get(server, url, params={"h5path": h5path})

    assert group(f"/groups/{gid('/')}", "entry/data").json()["id"] == gid("/entry/data")
    assert group(f"/groups/{gid('/entry')}", "data").json()["id"] == gid("/entry/data")
    assert group(f"/groups/{gid('/entry')}", "./data").json()["id"] == gid("/entry/data")
    assert group(f"/groups/{gid('/entry')}", ".").json()["id"] == gid("/entry")
    assert group(f"/groups/{gid('/entry/data')}", "/entry/status").json()["id"] == gid("/entry/status")
    assert group("/groups", "/entry/status").json()["id"] == gid("/entry/status")
    assert group("/groups/", "/entry").json()["id"] == gid("/entry")
    assert group("/groups", "entry").status_code == 400  # relative without a group to start from
    assert group(f"/groups/{gid('/')}", "entry/data/sinogram").status_code == 404  # a dataset
    assert group(f"/groups/{gid('/')}", "entry/nothing").status_code == 404


def test_chunks_stay_within_the_shape_when_the_array_is_swapped(server: HdfRestServer, domain: Domain) -> None:
    with domain.lock:
        domain.create_dataset("/entry/vol", np.zeros((4, 16, 16), np.float32), chunks=(1, 16, 16), share=True)
        domain.dataset("/entry/vol").array = np.ones((2, 8, 8), np.float32)  # as the reducer swaps a volume
        domain.commit()
    with open_file(server.url, domain.name) as f:
        vol = f["/entry/vol"]
        assert vol.shape == (2, 8, 8) and vol.chunks == (1, 8, 8)
        np.testing.assert_array_equal(vol[:], np.ones((2, 8, 8), np.float32))


# -- long selections, client input, disconnects ----------------------------------------------
def _post_value(server: HdfRestServer, domain: Domain, data: bytes, content_type: str | None) -> requests.Response:
    headers = {"Accept": "application/octet-stream"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    url = f"{server.url}/datasets/{sino_id(domain)}/value"
    return requests.post(url, params={"domain": domain.name}, data=data, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (np.array([[0, 0, 0], [1, 2, 3]], "<u8").tobytes(), rest_app.OCTET),  # h5pyd's points
        (b'{"points": [[0, 0, 0], [1, 2, 3]]}', "application/json"),
        (b'{"select": "[[0,1],[0,2],[0,3]]"}', None),  # h5pyd's long select: JSON without a Content-Type
    ],
    ids=["binary-points", "json-points", "json-select"],
)
def test_a_posted_selection_is_parsed_once_in_the_pool_without_domain_lock(
    server: HdfRestServer, domain: Domain, monkeypatch: pytest.MonkeyPatch, data: bytes, content_type: str | None
) -> None:
    """Parsing 15 MiB of points took seconds, under domain.lock and twice: the reducer's
    updates and every reader of the domain waited for it. The test holds the parse
    itself, so nothing depends on the machine's speed."""
    threads: list[str] = []
    parsing, gate = threading.Event(), threading.Event()

    def held(parse: Any) -> Any:
        def parse_held(raw: Any, shape: tuple[int, ...]) -> Any:
            if raw is not None:  # the POST's, not the small GET's (no select)
                threads.append(threading.current_thread().name)
                parsing.set()
                gate.wait(60)  # bounded: a test that fails still ends
            return parse(raw, shape)

        return parse_held

    monkeypatch.setattr(rest_app, "parse_points", held(parse_points))
    monkeypatch.setattr(rest_app, "parse_select", held(parse_select))
    answers: list[requests.Response] = []
    poster = threading.Thread(target=lambda: answers.append(_post_value(server, domain, data, content_type)))
    poster.start()
    try:
        assert parsing.wait(30), "the selection was never parsed"
        # What the reducer does for each update; it waited for the whole parse.
        assert domain.lock.acquire(timeout=10), "domain.lock is held while the selection is parsed"
        domain.lock.release()
        small = get(server, f"/datasets/{dataset_id(domain, '/entry/status/frames_received')}/value")
        assert small.json()["value"] == 0
    finally:
        gate.set()
    poster.join(30)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    sino = domain.dataset(SINO).array
    np.testing.assert_array_equal(np.frombuffer(answers[0].content, np.float32), [sino[0, 0, 0], sino[1, 2, 3]])
    assert len(threads) == 1 and threads[0].startswith("hdf-rest-read"), threads  # once, off the event loop


def test_json_bodies_above_their_cap_are_413_and_binary_points_still_go(domain: Domain) -> None:
    """JSON decoding holds the GIL (every thread waits): JSON bodies are capped far below
    the 16 MiB that binary points may take. Checked on the declared length and, for a
    chunked body, on what arrived."""
    with HdfRestServer(limits=Limits(max_json_request_body=4096)) as srv:
        srv.start(domain)
        points = [[i % 12, i % 16, i % 24] for i in range(1000)]
        body = json.dumps({"points": points}).encode()
        assert len(body) > 4096
        for data in (body, iter([body[:3000], body[3000:]])):  # Content-Length, then chunked
            answer = _post_value(srv, domain, data, "application/json")  # type: ignore[arg-type]
            assert answer.status_code == 413, answer.text
            assert "octet-stream" in answer.json()["message"]
        binary = _post_value(srv, domain, np.array(points, "<u8").tobytes(), "application/octet-stream")
        assert binary.status_code == 200
        coords = np.array(points).T
        np.testing.assert_array_equal(
            np.frombuffer(binary.content, np.float32), domain.dataset(SINO).array[tuple(coords)]
        )


@pytest.mark.parametrize("select", ["[[99999999999999999999],:,:]", "[[-99999999999999999999],:,:]"])
def test_coordinates_beyond_int64_are_400(server: HdfRestServer, domain: Domain, select: str) -> None:
    answer = get(server, f"/datasets/{sino_id(domain)}/value", params={"select": select})
    assert answer.status_code == 400, answer.text  # was a 500 (OverflowError)
    assert "out of range" in answer.json()["message"]


@pytest.mark.parametrize(
    ("target", "data", "content_type", "needle"),
    [
        ("value", b'{"points": [[0, 0, 0]]}', "application/json; charset=nonexistent", "charset"),
        ("attributes", b'{"attr_names": []}', "application/json; charset=nonexistent", "charset"),
        ("attributes", b'{"attr_names": []}', "application/json; charset=base64", "charset"),  # not a text codec
        ("value", b'{"points": [[0, 0, ' + b"9" * 5000 + b"]]}", "application/json", "too many digits"),
        ("attributes", b'{"attr_names": ' + b"9" * 5000 + b"}", "application/json", "too many digits"),
        ("value", b'{"points": [[0, 0, 0]]}', "application/json; charset=utf-32", "not valid utf-32"),
    ],
)
def test_undecodable_json_bodies_are_400(
    server: HdfRestServer, domain: Domain, target: str, data: bytes, content_type: str, needle: str
) -> None:
    path = {
        "value": f"/datasets/{sino_id(domain)}/value",
        "attributes": f"/groups/{make_id(domain.name, 'groups', '/')}/attributes",
    }[target]
    answer = requests.post(
        server.url + path, params={"domain": domain.name}, data=data, headers={"Content-Type": content_type}, timeout=10
    )
    assert answer.status_code == 400, answer.text  # were 500s (LookupError, ValueError)
    assert needle in answer.json()["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
def test_a_body_that_is_not_its_content_encoding_is_400(
    server: HdfRestServer, domain: Domain, content_type: str
) -> None:
    url = f"{server.url}/datasets/{sino_id(domain)}/value"
    headers = {"Content-Type": content_type, "Content-Encoding": "gzip"}
    answer = requests.post(url, params={"domain": domain.name}, data=b"not gzip at all", headers=headers, timeout=10)
    assert answer.status_code == 400, answer.text  # was a 500 (RequestPayloadError)
    assert answer.json()["message"] == "request body could not be read: Can not decode content-encoding: gzip"
    for _ in range(5):  # a route that never reads the body: aiohttp read it after the answer
        refused = requests.post(f"{server.url}/about", data=b"not gzip" * 1000, headers=headers, timeout=10)
        assert refused.status_code == 403


def _raw_get(url: str, target: str, host: str) -> tuple[int, bytes]:
    """GET ``target`` with this exact Host header (requests would send a valid one)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("host", ["[", "a:b:c", "host:port", ":99999", "@"])
def test_a_malformed_host_header_is_400_not_500(server: HdfRestServer, domain: Domain, host: str) -> None:
    # Every answer needs a Host it can read: it must name the server (DNS rebinding).
    for target in (f"/?domain={domain.name}", "/about"):
        status, body = _raw_get(server.url, target, host)
        assert status == 400, body
        assert "Host" in json.loads(body)["message"]


def _disconnect_mid_download(url: str) -> None:
    conn, body, _ = _stalled_binary_read(url)
    body.close()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with RST
    conn.close()


def _disconnect_mid_upload(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(
            f"POST {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"\0" * 4096
        )
        time.sleep(0.2)  # the handler is reading the body when the connection goes


@pytest.mark.parametrize("disconnect", [_disconnect_mid_download, _disconnect_mid_upload], ids=["download", "upload"])
def test_a_client_that_disconnects_is_a_debug_line_not_an_error(
    caplog: pytest.LogCaptureFixture, disconnect: Any
) -> None:
    """aiohttp logged "Error handling request ... Connection lost" at ERROR with a
    traceback for every reader that closed its connection early (the error-log
    fixture fails the test on it)."""
    caplog.set_level(logging.DEBUG, logger=rest_app.__name__)
    big = Domain("/big.h5")
    big.create_dataset("/x", np.zeros((64, 256, 256), np.float32))
    with HdfRestServer() as srv:
        srv.start(big)
        disconnect(f"{srv.url}/datasets/{dataset_id(big, '/x')}/value?domain={big.name}")
        deadline = time.monotonic() + 20
        while not any("client went away" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the server never noticed the disconnect"
            time.sleep(0.05)
        assert requests.get(f"{srv.url}/about", timeout=5).status_code == 200
        assert srv.stats().errors == 0
    # Closed (in-flight requests finished): whatever aiohttp logs for it is in caplog.


@pytest.mark.allow_error_logs
def test_a_connection_error_with_the_client_still_there_is_a_500(
    server: HdfRestServer, domain: Domain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a closed client connection makes a ConnectionError a disconnect."""

    def broken(array: npt.NDArray[Any], sel: Selection) -> npt.NDArray[Any]:
        raise ConnectionRefusedError("something of ours")

    monkeypatch.setattr(rest_app, "extract", broken)
    answer = get(server, f"/datasets/{sino_id(domain)}/value")
    assert answer.status_code == 500
    assert "ConnectionRefusedError" in answer.json()["message"]
    assert server.stats().errors == 1


def test_no_points_read_as_no_values_in_json_and_in_binary(server: HdfRestServer, domain: Domain) -> None:
    """An empty point list is an empty selection, whichever way it is sent (HSDS answers
    JSON ``{"points": []}`` with an empty value); JSON used to be 400 for rank > 1."""
    url = f"{server.url}/datasets/{sino_id(domain)}/value"
    params = {"domain": domain.name}
    as_json = requests.post(url, params=params, json={"points": []}, timeout=10)
    as_binary = requests.post(url, params=params, data=b"", headers={"Content-Type": rest_app.OCTET}, timeout=10)
    assert (as_json.status_code, as_json.json()["value"]) == (200, [])
    assert (as_binary.status_code, as_binary.json()["value"]) == (200, [])
    assert requests.post(url, params=params, json={"points": [[]]}, timeout=10).status_code == 400


def _outcome_of(status: dict[str, object]) -> ScanOutcome | None:
    """What play reads (scan_outcome) of a served domain with this ``/entry/status``."""
    from streamtomo.app.scan_outcome import scan_outcome

    domain = Domain("/outcome.h5")
    for name, value in status.items():
        domain.create_dataset(f"/entry/status/{name}", value)
    domain.commit()
    server = HdfRestServer()
    server.start(domain)
    try:
        return scan_outcome(server.url, "/outcome.h5")
    finally:
        server.close()


def test_the_scan_outcome_play_prints_names_what_the_hsds_mirror_dropped() -> None:
    """An HSDS mirror that failed after the start was said only in the reducer's log;
    play said the scan finished and nothing else (review of the deployment CLI)."""
    outcome = _outcome_of(
        {"generation": 3, "state": "finished", "reason": "", "lost_frames": "[]", "publisher_dropped": 54}
    )
    assert outcome is not None and outcome.state == "finished" and outcome.mirror_dropped == 54
    assert not outcome.base_doubted


def test_the_scan_outcome_play_prints_doubts_the_lost_positions_of_a_doubted_frame_base() -> None:
    """frame_base 0 for a detector that counts from 1 left position 0 empty with every
    frame sent: play said "1 frame lost (never reached the reducer: 0)"."""
    from streamtomo.pipeline.streaming.admission import describe_lost

    rejected = json.dumps({"past_layout": 1, "frame_base_suspect": 1})
    outcome = _outcome_of(
        {"generation": 3, "state": "finished", "reason": "", "lost_frames": "[[0, 0]]", "rejected": rejected}
    )
    assert outcome is not None and outcome.base_doubted and outcome.lost_frames == ((0, 0),)
    said = describe_lost(list(outcome.lost_frames), outcome.base_doubted)
    assert said.startswith("1 frame position never filled (0): lost, or the frames are numbered from another")


def test_the_live_domain_answers_only_under_its_names() -> None:
    """DNS rebinding: another site's name, rebound to the live port's address, made its
    page the live domain's own origin, free to read the scan. Chromium sends such a
    page's same-origin reads over http with no Origin and no Sec-Fetch-Site (review of
    a first fix that checked only requests with them): only the Host tells them apart."""
    domain = Domain("/names.h5")
    domain.create_dataset("/x", np.arange(3))
    domain.commit()
    server = HdfRestServer(host_names=("live.beamline.example",))
    server.start(domain)
    try:
        about = f"{server.url}/?domain=/names.h5"

        def status(host: str, **headers: str) -> int:
            return requests.get(about, headers={"Host": host, **headers}, timeout=10).status_code

        browser = {"Sec-Fetch-Site": "same-origin"}
        refused = requests.get(about, headers={"Host": "rebound.example:80", **browser}, timeout=10)
        assert refused.status_code == 403 and "STREAMTOMO_HTTP_NAMES" in refused.text
        assert status("rebound.example", Origin="http://rebound.example") == 403
        assert status("rebound.example") == 403  # a rebound page's read as Chromium sends it
        assert status("127.0.0.1:1", **browser) == 200
        assert status("localhost", **browser) == 200
        assert status("LIVE.beamline.example.:443", **browser) == 200  # a name it was given
    finally:
        server.close()
