"""JSON values: the pieces the server streams are the same text as one json.dumps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamtomo.hsds_bridge.rest_types import JSON_PIECE_VALUES, array_json_pieces, array_to_json


@pytest.mark.parametrize(
    "shape",
    [(), (0,), (0, 3), (3, 0), (7,), (5, 3), (3, 2, JSON_PIECE_VALUES), (2, 3, 2, 700), (2, 2 * JSON_PIECE_VALUES)],
)
def test_pieces_join_to_the_json_of_the_whole_array(shape: tuple[int, ...]) -> None:
    arr = np.random.default_rng(1).random(shape, dtype=np.float32)
    text = "".join(array_json_pieces(arr))
    assert text == json.dumps(array_to_json(arr), separators=(",", ":"))
    assert np.array_equal(np.array(json.loads(text), dtype=np.float32).reshape(shape), arr)


def test_large_blocks_are_encoded_in_pieces_of_rows() -> None:
    pieces = list(array_json_pieces(np.zeros((1, 64, JSON_PIECE_VALUES), np.float32)))
    assert len(pieces) == 64


def test_nan_and_infinities_are_quoted_or_null_with_ignore_nan() -> None:
    arr = np.array([[1.0, np.nan], [np.inf, -np.inf]], np.float32)
    assert array_to_json(arr) == [[1.0, "NaN"], ["Infinity", "-Infinity"]]
    assert array_to_json(arr, ignore_nan=True) == [[1.0, None], [None, None]]
    assert "".join(array_json_pieces(arr, ignore_nan=True)) == "[[1.0,null],[null,null]]"
    assert array_to_json(np.float64(np.nan), ignore_nan=True) is None
