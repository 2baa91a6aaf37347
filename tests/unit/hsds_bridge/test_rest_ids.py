"""Dataset ids follow shape and dtype: a replaced dataset is a new object (HSDS)."""

from __future__ import annotations

import numpy as np
import pytest

from streamtomo.hsds_bridge.domain import Domain
from streamtomo.hsds_bridge.rest_ids import IdIndex, StaleId, node_id


def test_a_dataset_of_another_shape_or_dtype_has_another_id_the_same_one_the_same_id() -> None:
    domain = Domain("/d.h5")
    first = node_id(domain.name, domain.create_dataset("/a", np.zeros((4, 5), np.int32)))
    assert node_id(domain.name, domain.create_dataset("/a", np.ones((4, 5), np.int32))) == first
    assert node_id(domain.name, domain.create_dataset("/a", np.zeros((5, 4), np.int32))) != first
    assert node_id(domain.name, domain.create_dataset("/a", np.zeros((4, 5), np.float32))) != first
    assert node_id(Domain("/d.h5").name, Domain("/d.h5").create_dataset("/a", np.zeros((4, 5), np.int32))) == first


@pytest.mark.parametrize(
    "replace",
    [
        lambda d: d.create_dataset("/a", np.zeros((5, 4), np.int32)),
        lambda d: d.create_dataset("/a", np.zeros((4, 5), np.uint8)),
        lambda d: setattr(d.dataset("/a"), "array", np.zeros((6, 5), np.int32)),
    ],
    ids=["shape", "dtype", "array-swapped"],
)
def test_the_id_of_a_replaced_dataset_is_stale_and_the_new_id_resolves(replace: object) -> None:
    domain = Domain("/d.h5")
    old = node_id(domain.name, domain.create_dataset("/a", np.zeros((4, 5), np.int32)))
    index = IdIndex.for_domain(domain)
    with domain.lock:
        assert index.resolve(old) is domain.dataset("/a")
        replace(domain)  # type: ignore[operator]
        with pytest.raises(StaleId, match=r"/a was replaced.*reopen"):
            index.resolve(old)
        new = node_id(domain.name, domain.dataset("/a"))
        assert index.resolve(new) is domain.dataset("/a")
        with pytest.raises(StaleId):  # still stale after the re-walk that found the new id
            index.resolve(old)


def test_an_id_handed_out_before_any_lookup_is_stale_once_its_dataset_is_replaced() -> None:
    """A reader learns ids from links or getobjs: the index never resolved them."""
    domain = Domain("/d.h5")
    index = IdIndex.for_domain(domain)
    with domain.lock:
        handed_out = index.id_of(domain.create_dataset("/late", np.zeros(3)))
        domain.create_dataset("/late", np.zeros(4))
        with pytest.raises(StaleId):
            index.resolve(handed_out)
