"""Backend-independent checks that a Publisher makes a Domain readable with h5pyd 1.0.

Subclass :class:`PublisherContract` in a ``Test*`` class and provide a ``publisher``
fixture (a started-on-demand :class:`~streamtomo.hsds_bridge.publisher.Publisher`, closed at
teardown). Override ``publisher_url_for`` when readers reach the data somewhere else
than ``publisher.url`` under ``domain.name``, and :meth:`wait_published` when
``notify()`` publishes asynchronously (an HSDS writer: wait until
``stats().backlog == 0``).

Every test writes through the domain exactly as the reducer does (update under
``domain.lock``, ``commit()``, ``notify()``), waits for publication, and reads
everything back with real h5pyd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import h5pyd
import numpy as np
import numpy.typing as npt
import pytest

from streamtomo.hsds_bridge.domain import Domain, DomainDataset, DomainGroup
from streamtomo.hsds_bridge.publisher import Publisher

UrlFor = Callable[[Domain], tuple[str, str]]

N_ANGLES, N_ROWS, N_COLS = 12, 16, 24


def make_scan_domain(name: str = "/home/streamtomo/contract.h5") -> Domain:
    """A small NeXus-like live domain with every value type the pipeline publishes."""
    rng = np.random.default_rng(7)
    domain = Domain(name, root_attrs={"NX_class": "NXroot", "default": "entry", "creator": "streamtomo"})
    domain.create_group("/entry", attrs={"NX_class": "NXentry", "default": "data"})
    domain.create_group(
        "/entry/data",
        attrs={
            "NX_class": "NXdata",
            "signal": "sinogram",
            "axes": ["rotation_angle", ".", "."],
            "rotation_angle_indices": 0,
        },
    )
    domain.create_dataset(
        "/entry/data/sinogram",
        rng.random((N_ANGLES, N_ROWS, N_COLS), dtype=np.float32),
        chunks=(4, N_ROWS, N_COLS),
        attrs={"units": "counts", "interpretation": "image"},
    )
    domain.create_dataset("/entry/data/rotation_angle", np.linspace(0, 180, N_ANGLES), attrs={"units": "degree"})
    domain.create_dataset("/entry/image_key", np.zeros(N_ANGLES, dtype=np.uint8))
    domain.create_dataset("/entry/frame_index", np.arange(N_ANGLES, dtype=np.int64) - 3)
    domain.create_dataset("/entry/valid", np.ones(N_ANGLES, dtype=bool))
    domain.create_dataset("/entry/detector", np.array([b"eiger", b"pco.edge"], dtype="S10"))
    status = domain.create_group("/entry/status", attrs={"NX_class": "NXcollection"})
    assert isinstance(status, DomainGroup)
    domain.create_dataset("/entry/status/state", "running")
    domain.create_dataset("/entry/status/frames_received", np.int64(0))
    domain.create_dataset("/entry/status/progress", np.float64(0.0))
    domain.commit()
    return domain


# -- reading with h5pyd -------------------------------------------------------------
def open_file(endpoint: str, name: str) -> Any:
    return h5pyd.File(name, "r", endpoint=endpoint, username=None, password=None)


def as_python(value: Any) -> Any:
    """h5pyd returns vlen strings as bytes (like h5py 3): compare as str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return [as_python(v) for v in value.tolist()]
    return value


def expected_attr(value: Any) -> Any:
    if isinstance(value, list):
        return [as_python(v) for v in value]
    return value


def assert_attrs_equal(remote: Any, local: dict[str, Any], where: str) -> None:
    assert sorted(remote.keys()) == sorted(local), where
    for key, value in local.items():
        got = as_python(remote[key])
        if isinstance(got, np.ndarray):
            got = got.tolist()
        assert got == expected_attr(value), f"{where}@{key}"


def assert_value_equal(got: Any, expected: npt.NDArray[Any], path: str) -> None:
    if expected.dtype.kind == "O":
        assert as_python(got) == expected[()], path
        return
    got_arr = np.asarray(got)
    assert got_arr.shape == expected.shape, path
    assert got_arr.dtype == expected.dtype, path
    np.testing.assert_array_equal(got_arr, expected, err_msg=path)


def snapshot(domain: Domain) -> dict[str, npt.NDArray[Any]]:
    with domain.lock:
        return {n.path: n.array.copy() for n in domain.walk() if isinstance(n, DomainDataset)}


def assert_file_matches(f: Any, domain: Domain) -> None:
    """Every group, link, attribute and dataset value in ``f`` equals the domain."""
    with domain.lock:
        nodes = list(domain.walk())
    for node in nodes:
        remote = f[node.path]
        assert_attrs_equal(remote.attrs, node.attrs, node.path)
        if isinstance(node, DomainGroup):
            assert sorted(remote.keys()) == sorted(node.children), node.path
        else:
            assert remote.shape == node.shape, node.path
            with domain.lock:
                expected = node.array.copy()
            assert_value_equal(remote[()], expected, node.path)


class PublisherContract:
    """Mix-in test suite; see the module docstring."""

    @pytest.fixture
    def publisher(self) -> Iterator[Publisher]:
        raise NotImplementedError("subclasses provide the publisher fixture")

    @pytest.fixture
    def publisher_url_for(self, publisher: Publisher) -> UrlFor:
        def start(domain: Domain) -> tuple[str, str]:
            publisher.start(domain)
            publisher.notify()
            self.wait_published(publisher)
            return publisher.url, domain.name

        return start

    def wait_published(self, publisher: Publisher) -> None:
        """Block until everything notified is readable (synchronous backends: no-op)."""

    def publish(self, domain: Domain, publisher: Publisher) -> None:
        domain.commit()
        publisher.notify()
        self.wait_published(publisher)

    # -- the contract ---------------------------------------------------------------
    def test_structure_attributes_and_values(self, publisher_url_for: UrlFor) -> None:
        domain = make_scan_domain()
        endpoint, name = publisher_url_for(domain)
        with open_file(endpoint, name) as f:
            assert_file_matches(f, domain)
            axes = as_python(f["/entry/data"].attrs["axes"])
            assert axes == ["rotation_angle", ".", "."]

    def test_hyperslabs_equal_numpy(self, publisher_url_for: UrlFor) -> None:
        domain = make_scan_domain()
        endpoint, name = publisher_url_for(domain)
        expected = snapshot(domain)["/entry/data/sinogram"]
        with open_file(endpoint, name) as f:
            ds = f["/entry/data/sinogram"]
            np.testing.assert_array_equal(ds[3], expected[3])
            np.testing.assert_array_equal(ds[2:9, 5:11, :], expected[2:9, 5:11, :])
            np.testing.assert_array_equal(ds[1:12:3, ::2, 7], expected[1:12:3, ::2, 7])
            np.testing.assert_array_equal(ds[:, 4, 2:20:5], expected[:, 4, 2:20:5])

    def test_updates_are_seen_by_open_and_fresh_readers(self, publisher_url_for: UrlFor, publisher: Publisher) -> None:
        domain = make_scan_domain()
        endpoint, name = publisher_url_for(domain)
        with open_file(endpoint, name) as f:
            for step in range(1, 4):
                with domain.lock:
                    domain.dataset("/entry/data/sinogram").write((slice(step, step + 2),), float(step))
                    domain.dataset("/entry/image_key").write((step,), 2)
                    domain.dataset("/entry/status/frames_received").set_scalar(step * 10)
                    domain.dataset("/entry/status/progress").set_scalar(step / 4)
                    domain.dataset("/entry/status/state").set_scalar(f"step {step}")
                self.publish(domain, publisher)
                # The already open file: values are re-read, not cached.
                assert_file_matches(f, domain)
        with open_file(endpoint, name) as fresh:
            assert_file_matches(fresh, domain)
            assert as_python(fresh["/entry/status/state"][()]) == "step 3"
            assert fresh["/entry/status/frames_received"][()] == 30
