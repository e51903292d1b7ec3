"""uint8 conversion with the official truncation, PNG writing, labelled grids."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.eval.image_artifacts import save_labelled_grid, to_uint8, write_pngs


def test_to_uint8_truncates_like_numpy_astype():
    x = torch.tensor([0.0, 0.5, 254.9 / 255, 1.0, 100 / 255 - 1e-7]).view(1, 1, 1, 5)
    expected = (x.numpy() * 255.0).astype(np.uint8)  # the official tool's conversion
    assert to_uint8(x).tolist() == expected.tolist() == [[[[0, 127, 254, 255, 99]]]]
    assert to_uint8(x).dtype == torch.uint8
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8(x + 0.5)


@pytest.mark.parametrize("use_pool", [False, True])
def test_write_pngs_round_trips_exactly(tmp_path, use_pool):
    images = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    paths = [tmp_path / f"img_{i}.png" for i in range(4)]
    with ThreadPoolExecutor(3) as pool:
        write_pngs(images, paths, pool if use_pool else None)
    for image, path in zip(images, paths, strict=True):
        assert torch.equal(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1), image)
    with pytest.raises(ValueError, match="uint8"):
        write_pngs(images.float(), paths)
    with pytest.raises(ValueError, match="paths"):
        write_pngs(images, paths[:3])


def test_labelled_grid_layout_and_labels(tmp_path):
    white = torch.ones(3, 3, 40, 40)
    path = save_labelled_grid(tmp_path / "sub" / "grid.png", [white, white], [None, ["a", "b", "c"]], padding=2)
    grid = np.array(Image.open(path))
    assert grid.shape == (2 * 42 + 2, 3 * 42 + 2, 3)
    first_row, second_row = grid[2:42, 2:42], grid[44:84, 2:42]
    assert (first_row == 255).all()  # no label on the first row
    assert (second_row[:5, :5] == 0).any()  # the label's dark box in the top-left corner
    assert (second_row[-10:, -10:] == 255).all()  # the rest of the tile untouched
    with pytest.raises(ValueError, match="same"):
        save_labelled_grid(tmp_path / "bad.png", [white, white[:2]], [None, None])
