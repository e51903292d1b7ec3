"""Shared fixtures of the evaluation tests: a tiny ImageFolder of the embedded shapes and a tiny random VTP."""

import pytest

from unitok.modalities.image.toy import write_image_folder
from unitok.testing import tiny_vtp


@pytest.fixture(scope="session")
def toy_folder(tmp_path_factory):
    """train/ (48 images) and val/ (24) of 32-px shapes, with classnames.txt and templates.txt."""
    return write_image_folder(tmp_path_factory.mktemp("toy"), {"train": 48, "val": 24}, size=32)


@pytest.fixture(scope="session")
def tiny_vtp_dir(tmp_path_factory):
    """A save_pretrained directory of the tiny VTP (the released layout)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_vtp"
    tiny_vtp().save_pretrained(path)
    return path
