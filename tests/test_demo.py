"""The demo (``python -m ganops demo``) and its dataset (:mod:`ganops.data`)."""

from __future__ import annotations

import struct
import sys
import zlib

import pytest
import torch

from ganops import __main__ as cli
from ganops import data
from ganops.data import ShapesDataset, random_batch, render
from ganops.demo import _settled_range, image_grid, write_loss_curve, write_png
from ganops.training import GANTrainer


def _read_png(path) -> torch.Tensor:
    """Decode an 8-bit RGB PNG without filters (what :func:`write_png` writes) to ``[3, H, W]`` uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        assert struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    rows = zlib.decompress(chunks[b"IDAT"])
    pixels = torch.frombuffer(bytearray(rows), dtype=torch.uint8).view(height, 1 + 3 * width)
    assert (pixels[:, 0] == 0).all()
    return pixels[:, 1:].reshape(height, width, 3).permute(2, 0, 1)


def test_dataset_is_deterministic_given_the_seed():
    first, again, other = ShapesDataset(20, seed=1), ShapesDataset(20, seed=1), ShapesDataset(20, seed=2)
    assert all(torch.equal(first[i], again[i]) for i in (0, 7, 19))
    assert not torch.equal(first[3], other[3])
    # Items do not depend on the order in which they are read.
    assert torch.equal(ShapesDataset(20, seed=1)[5], first[5])
    batch = random_batch(8, torch.Generator().manual_seed(3))
    assert torch.equal(batch, random_batch(8, torch.Generator().manual_seed(3)))


def test_dataset_images_are_nontrivial_shapes():
    images = random_batch(64, torch.Generator().manual_seed(0))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    # Every image has a dark plain background (its most common colour) and a bright coloured shape covering
    # between 1% and 60% of it.
    colourful = (images.max(dim=1).values - images.min(dim=1).values) > 0.5
    coverage = colourful.float().mean(dim=(1, 2))
    assert (coverage > 0.01).all() and (coverage < 0.6).all()
    # The images differ from each other.
    assert images.flatten(1).std(dim=0).mean() > 0.2


def test_render_draws_each_shape_kind_where_asked():
    centres = torch.tensor([[[16.0, 16.0]]]).expand(3, 1, 2)
    kwargs = dict(
        centres=centres, sizes=torch.full((3, 1), 8.0), angles=torch.zeros(3, 1),
        colours=torch.ones(3, 1, 3), present=torch.ones(3, 1, dtype=torch.bool), background=torch.zeros(3, 3),
    )
    circle, square, triangle = render(torch.tensor([[0], [1], [2]]), image_size=32, **kwargs)[:, 0]
    # Areas: pi r^2, (2r)^2 and the equilateral triangle with inradius r/2, 3 sqrt(3) (r/2)^2.
    assert circle.sum().item() == pytest.approx(torch.pi * 64, rel=0.02)
    assert square.sum().item() == pytest.approx(256, rel=0.02)
    assert triangle.sum().item() == pytest.approx(3 * 3**0.5 * 16, rel=0.05)
    assert circle[16, 16] == square[16, 16] == triangle[16, 16] == 1
    assert circle[0, 0] == square[0, 0] == triangle[0, 0] == 0


def test_bad_dataset_arguments_name_the_argument():
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(image_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        random_batch(0, torch.Generator())
    with pytest.raises(IndexError):
        ShapesDataset(4)[4]
    for hues in ((0.5, 0.2), (0.0, 1.5), (0.1,), [0.0, 0.5], (True, 1.0)):
        with pytest.raises(ValueError, match="hues"):
            random_batch(2, torch.Generator(), hues=hues)


def test_hues_restrict_the_shapes_colours_and_the_swap_moves_them_a_third_back():
    generator = torch.Generator().manual_seed(4)
    everything = random_batch(128, generator, 16)
    reds = random_batch(128, generator, 16, hues=data.CYCLEGAN_HUES)
    assert data.hue_fraction(reds, data.CYCLEGAN_HUES) > 0.98
    assert data.hue_fraction(data.swap_colours(reds), data.CYCLEGAN_SWAPPED_HUES) > 0.98
    assert data.hue_fraction(data.swap_colours(reds), data.CYCLEGAN_HUES) < 0.02
    # Every hue: about a third of the pixels in each third of the circle; a wrapping range through red.
    assert 0.2 < data.hue_fraction(everything, (0.0, 1 / 3)) < 0.47
    assert data.hue_fraction(everything, (5 / 6, 1 / 6)) == pytest.approx(
        data.hue_fraction(everything, (5 / 6, 1.0)) + data.hue_fraction(everything, (0.0, 1 / 6)), abs=1e-9
    )
    pure = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]]).view(3, 3, 1, 1)
    assert [data.hue_fraction(pure[i : i + 1], (c - 0.01, c + 0.01)) for i, c in enumerate((0.0, 1 / 3, 2 / 3))] == [1.0] * 3
    assert data.hue_fraction(torch.zeros(2, 3, 4, 4), (0.0, 1.0)) == 0.0
    with pytest.raises(ValueError, match="images"):
        data.hue_fraction(torch.zeros(3, 4, 4), (0.0, 1.0))


def test_sliced_wasserstein_distance_separates_the_data_from_noise():
    generator = torch.Generator().manual_seed(5)
    real, other_real = random_batch(256, generator, 8), random_batch(256, generator, 8)
    noise = torch.rand(real.shape, generator=generator) * 2 - 1
    assert data.sliced_wasserstein_distance(real, real) == 0.0
    between_real = data.sliced_wasserstein_distance(real, other_real)
    assert between_real < 0.06
    assert data.sliced_wasserstein_distance(noise, real) > 8 * between_real
    assert data.sliced_wasserstein_distance(torch.zeros_like(real), real) > 8 * between_real
    # Symmetric, independent of the order of the samples, and fixed by the seed.
    assert data.sliced_wasserstein_distance(other_real, real) == pytest.approx(between_real, rel=1e-12)
    assert data.sliced_wasserstein_distance(real.flip(0), other_real) == pytest.approx(between_real, rel=1e-12)
    assert data.sliced_wasserstein_distance(real, other_real, seed=1) != between_real
    # A shift by c along every pixel moves each projection by c * sum(direction): the distance grows with c.
    assert data.sliced_wasserstein_distance(real + 0.5, real) > data.sliced_wasserstein_distance(real + 0.1, real)
    with pytest.raises(ValueError, match="one shape"):
        data.sliced_wasserstein_distance(real, real[:10])
    with pytest.raises(ValueError, match="projections"):
        data.sliced_wasserstein_distance(real, real, projections=0)


def test_png_writer_and_grid_round_trip(tmp_path):
    image = torch.rand(3, 5, 7)
    assert torch.allclose(image_grid(image[None] * 2 - 1, columns=1, padding=0), image)
    write_png(tmp_path / "image.png", image)
    assert torch.equal(_read_png(tmp_path / "image.png"), (image * 255).round().to(torch.uint8))


@pytest.mark.parametrize("model, loss", [("sagan", "hinge"), ("dcgan", "wgan-gp")])
def test_demo_trains_and_writes_both_pngs(tmp_path, model, loss, capsys):
    arguments = [
        "demo", "--model", model, "--loss", loss, "--steps", "3", "--batch-size", "4", "--image-size", "16",
        "--width", "8", "--minibatch-stddev", "--output", str(tmp_path), "--device", "cpu", "--backend", "cpp",
    ]
    assert cli.main(arguments) == 0
    samples = _read_png(tmp_path / "samples.png")
    # 6 rows of samples above 2 rows of real images (two padded grids), 8 columns, 64 px images (16 px x 4).
    assert samples.shape == (3, 8 * 66 + 4, 8 * 66 + 2)
    assert (tmp_path / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    output = capsys.readouterr().out
    assert "trained 3 steps" in output and "samples.png" in output


def test_demo_takes_d_steps_discriminator_steps_per_generator_step(tmp_path, monkeypatch):
    counts = {"d": 0, "g": 0}
    discriminator_step, generator_step = GANTrainer.discriminator_step, GANTrainer.generator_step

    def counting_discriminator_step(self, real, z):
        counts["d"] += 1
        return discriminator_step(self, real, z)

    def counting_generator_step(self, z):
        counts["g"] += 1
        return generator_step(self, z)

    monkeypatch.setattr(GANTrainer, "discriminator_step", counting_discriminator_step)
    monkeypatch.setattr(GANTrainer, "generator_step", counting_generator_step)
    arguments = [
        "demo", "--steps", "2", "--d-steps", "3", "--batch-size", "4", "--image-size", "8", "--width", "8",
        "--output", str(tmp_path), "--device", "cpu", "--backend", "cpp",
    ]
    assert cli.main(arguments) == 0
    assert counts == {"d": 6, "g": 2}


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "0", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="d-steps"):
        cli.main(["demo", "--d-steps", "0", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--model", "stylegan"])


def test_loss_curve_without_matplotlib_is_still_a_png(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    history = {"d": [1.0, 0.5, 0.25, 0.5], "g": [0.0, 1.0, 2.0, 1.5], "penalty": [0.0] * 4}
    kind = write_loss_curve(tmp_path / "losses.png", history, "title")
    assert "matplotlib is not installed" in kind
    curve = _read_png(tmp_path / "losses.png")
    # Two coloured curves on white: some pixels are neither white nor grey.
    coloured = (curve.max(dim=0).values.int() - curve.min(dim=0).values.int()) > 100
    assert coloured.sum() >= 8


def test_loss_curve_range_leaves_out_the_first_steps_spike():
    curves = {"d": [40.0, 10.0] + [1.0, 2.0] * 19, "g": [-30.0] + [0.0] * 39}
    low, high = _settled_range(curves)
    assert (low, high) == (-0.5, 2.5)
    assert _settled_range({"d": [3.0] * 10}) == (2.0, 4.0)
