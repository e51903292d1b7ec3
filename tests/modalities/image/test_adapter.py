import pytest
import torch
import torch.nn.functional as F

import unitok
from unitok.modalities.image.adapter import ImageAdapter


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (16, 32)])
def test_patchify_unpatchify_round_trip(size):
    a = ImageAdapter(patch_size=16)
    img = torch.randn(2, 3, *size)
    t = a.patchify({"image": img})
    h, w = size[0] // 16, size[1] // 16
    assert t.x.shape == (2, h * w, 768) and t.coords.shape == (2, h * w, 2) and t.meta["grid"] == (h, w)
    assert torch.equal(a.unpatchify(t), img)


def test_token_layout_is_the_conv_and_pixelshuffle_convention():
    a = ImageAdapter(patch_size=4, in_chans=3)
    img = torch.randn(1, 3, 8, 12)
    t = a.patchify(img)
    # token (y=1, x=2) value c*16 + i*4 + j is pixel (c, 4+i, 8+j)
    tok = t.x[0, 1 * 3 + 2].view(3, 4, 4)
    assert torch.equal(tok, img[0, :, 4:8, 8:12])
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)
    lin = torch.nn.Linear(48, 5)
    lin.weight.data = conv.weight.data.reshape(5, -1)
    lin.bias.data = conv.bias.data
    ref = conv(img).flatten(2).transpose(1, 2)
    assert torch.allclose(lin(t.x), ref, atol=1e-5)
    assert torch.allclose(a.embed(img, lin).x, ref)  # the conv fast path computes the same map
    out = torch.randn(1, 6, 48)
    assert torch.equal(
        a.unpatchify(out, {"grid": (2, 3)}), F.pixel_shuffle(out.transpose(1, 2).reshape(1, 48, 2, 3), 4)
    )


def test_coordinates_are_separate_per_axis():
    t = ImageAdapter(16).patchify(torch.zeros(1, 3, 32, 64))
    assert torch.allclose(t.coords[0, :, 0].unique(), torch.tensor([0.25, 0.75]))
    assert torch.allclose(t.coords[0, :, 1].unique(), torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_autoencoder_round_trip_on_images_of_any_size():
    a = ImageAdapter(16)
    model = unitok.create_model("unitok_tiny_img_p16_d8").eval()
    for size in [(32, 32), (48, 80)]:
        img = torch.randn(2, 3, *size)
        out = model(a.patchify(img))
        assert a.unpatchify(out["recon"]).shape == img.shape
        assert a.tokens_to_grid(out["latents"].x, out["latents"].meta["grid"]).shape == (
            2,
            8,
            size[0] // 16,
            size[1] // 16,
        )


def test_normalisation_round_trip_and_media(tmp_path):
    a = ImageAdapter(16)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(a.denormalize(a.normalize(x)), x, atol=1e-6)
    path = a.to_media(a.normalize(x), str(tmp_path / "row.png"))
    from PIL import Image

    assert Image.open(path).size == (2 * 16 + 3 * 2, 16 + 2 * 2)


def test_bad_images_are_named():
    a = ImageAdapter(16)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        a.patchify(torch.zeros(1, 3, 20, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        a.patchify(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="768 values"):
        a.unpatchify(torch.zeros(1, 4, 100), {"grid": (2, 2)})
    with pytest.raises(ValueError, match="do not fill"):
        a.unpatchify(torch.zeros(1, 5, 768), {"grid": (2, 2)})
