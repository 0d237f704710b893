"""Kaggle run-length encoding: column-major, 1-indexed ``start length`` pairs."""

import numpy as np
import pytest

from biomedseg.inference.predict.rle import instance_rle_rows, read_rle_csv, rle_decode, rle_encode, write_rle_csv


def test_known_example_is_column_major_and_one_indexed():
    m = np.zeros((3, 4), np.uint8)
    m[0:3, 0] = 1  # pixels 1, 2, 3 (first column, top to bottom)
    m[1, 1] = 1  # pixel 5
    m[2, 3] = 1  # last pixel: 12
    assert rle_encode(m) == "1 3 5 1 12 1"
    assert np.array_equal(rle_decode("1 3 5 1 12 1", (3, 4)), m)


@pytest.mark.parametrize("seed", range(5))
def test_random_round_trip(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, size=2)
    m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    assert np.array_equal(rle_decode(rle_encode(m), (h, w)), m)


@pytest.mark.parametrize("case", ["empty", "full", "first", "last", "single_middle", "one_pixel_image"])
def test_edge_cases(case):
    shape = (1, 1) if case == "one_pixel_image" else (7, 5)
    m = np.zeros(shape, np.uint8)
    if case == "full" or case == "one_pixel_image":
        m[:] = 1
    elif case == "first":
        m[0, 0] = 1
    elif case == "last":
        m[-1, -1] = 1
    elif case == "single_middle":
        m[3, 2] = 1
    text = rle_encode(m)
    expected = {
        "empty": "",
        "full": "1 35",
        "first": "1 1",
        "last": "35 1",
        "single_middle": f"{2 * 7 + 3 + 1} 1",
        "one_pixel_image": "1 1",
    }[case]
    assert text == expected
    assert np.array_equal(rle_decode(text, shape), m)


def test_nonzero_values_count_as_on_and_decode_value():
    m = np.array([[0, 5], [255, 0]], np.uint8)
    assert rle_encode(m) == "2 2"
    assert rle_decode("2 2", (2, 2), value=255).tolist() == [[0, 255], [255, 0]]
    assert rle_decode(None, (2, 2)).sum() == 0
    assert rle_decode(float("nan"), (2, 2)).sum() == 0  # pandas' empty cell


@pytest.mark.parametrize("bad", ["1", "0 2", "3 0", "1 5 3 2", "9 4", "a b"])
def test_invalid_rle_raises(bad):
    with pytest.raises(ValueError):
        rle_decode(bad, (3, 3))


def test_csv_and_instance_rows(tmp_path):
    lab = np.zeros((4, 4), np.int32)
    lab[0, 0] = 1
    lab[3, 3] = 2
    rows = instance_rle_rows("img7", lab)
    assert rows == [("img7", "1 1"), ("img7", "16 1")]
    assert instance_rle_rows("none", np.zeros((2, 2), np.int32)) == [("none", "")]
    path = tmp_path / "sub.csv"
    write_rle_csv(rows + [("none", "")], path, header=("ImageId", "EncodedPixels"))
    header, body = read_rle_csv(path)
    assert header == ["ImageId", "EncodedPixels"]
    assert body == [["img7", "1 1"], ["img7", "16 1"], ["none", ""]]
    write_rle_csv([("1_1", "1 3")], path)
    assert path.read_text().splitlines() == ["img,pixels", "1_1,1 3"]
