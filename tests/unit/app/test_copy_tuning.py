"""The reducer's environment sets glibc's non-temporal threshold, keeping what it has."""

from __future__ import annotations

from streamtomo.app.copy_tuning import NON_TEMPORAL_BYTES, non_temporal_copies


def test_the_threshold_joins_the_tunables_already_set() -> None:
    assert non_temporal_copies({}) == {"GLIBC_TUNABLES": f"glibc.cpu.x86_non_temporal_threshold={NON_TEMPORAL_BYTES}"}
    assert non_temporal_copies({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:glibc.cpu.x86_non_temporal_threshold={NON_TEMPORAL_BYTES}"
    }


def test_a_threshold_set_by_the_user_is_kept() -> None:
    assert non_temporal_copies({"GLIBC_TUNABLES": "glibc.cpu.x86_non_temporal_threshold=65536"}) == {}
    # Another tunable whose name merely starts alike is not the threshold.
    assert non_temporal_copies({"GLIBC_TUNABLES": "glibc.cpu.x86_non_temporal_threshold_x=1"})
