"""The network input: the table-driven normalisation must equal the formula it replaces."""

import numpy as np
import pytest

from models.preprocess import Normalization, to_network_input


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_equals_the_direct_formula_bit_for_bit(order: str) -> None:
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (3, 17, 11, 3), dtype=np.uint8)
    crops[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [0, 128, 255]]  # both ends of the range
    norm = Normalization(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), color_order=order)
    x = crops[..., ::-1] if order == "BGR" else crops
    mean = np.float32(norm.mean)[:: -1 if order == "BGR" else 1]
    std = np.float32(norm.std)[:: -1 if order == "BGR" else 1]
    expected = ((x.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2)
    out = to_network_input(crops, norm)
    assert out.dtype == np.float32
    assert out.shape == (3, 3, 17, 11)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_no_crops_gives_an_empty_batch() -> None:
    out = to_network_input(np.zeros((0, 8, 6, 3), np.uint8), Normalization())
    assert out.shape == (0, 3, 8, 6)
