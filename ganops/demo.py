"""``python -m ganops demo``: train a small SAGAN (or DCGAN) on procedurally drawn shapes (:mod:`ganops.data`).

Writes ``samples.png`` (a grid of generated images next to real ones) and ``losses.png`` (the loss curves)
into ``--output``. The defaults (SAGAN, hinge loss, 16x16 images, 1000 steps of two D steps and one G step)
finish in a few minutes on two CPU cores; ``--image-size 32`` puts the self-attention on a 32x32 map as in SAGAN,
at 5.9 times the time per step (3.63 vs 0.62 steps/s on 2 CPU cores).

The training step is :class:`ganops.training.GANTrainer`. ``--recipe NAME`` trains one of the classic GANs of
:mod:`ganops.recipes` instead, for the recipe's own CPU-minute-scale number of steps (SeqGAN prints sentences).
"""

from __future__ import annotations

import argparse
import struct
import time
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ganops import models
from ganops.data import random_batch
from ganops.training import DEMO_SETTINGS, LOSSES, make_trainer

# ------------------------------------------------------------------------------------------------ PNG output


def write_png(path: Path, image: Tensor) -> None:
    """Write ``image`` (``[3, H, W]`` floats in ``[0, 1]``) as an 8-bit RGB PNG using only zlib, so the sample
    grid needs no imaging library."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"write_png: image must be [3, H, W], got shape {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    height, width = pixels.shape[:2]
    # Each row starts with filter type 0 (none).
    raw = b"".join(b"\x00" + bytes(row.flatten().tolist()) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )


def image_grid(images: Tensor, columns: int, scale: int = 1, padding: int = 2) -> Tensor:
    """``[N, 3, H, W]`` in ``[-1, 1]`` -> one ``[3, H', W']`` image in ``[0, 1]``, ``columns`` wide, each image
    enlarged ``scale`` times (nearest), on a white background."""
    images = (images.detach().float().cpu() + 1) / 2
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    count, _, height, width = images.shape
    rows = -(-count // columns)
    grid = torch.ones(3, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index in range(count):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def _moving_average(values: list[float], window: int) -> list[float]:
    result, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        result.append(total / min(index + 1, window))
    return result


def write_loss_curve(path: Path, history: dict[str, list[float]], title: str) -> str:
    """The loss curves as a PNG: with matplotlib when installed, else a plain line plot drawn here (no axes
    labels). Returns which of the two was written."""
    series = {name: values for name, values in history.items() if values and any(v != 0 for v in values)}
    window = max(1, len(next(iter(series.values()), [])) // 50)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _draw_curves_without_matplotlib(path, {k: _moving_average(v, window) for k, v in series.items()})
        return "plain (matplotlib is not installed: `pip install matplotlib` for axes and a legend)"
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    averages = {name: _moving_average(values, window) for name, values in series.items()}
    for name, values in series.items():
        axes.plot(values, alpha=0.25, linewidth=0.8)
        axes.plot(averages[name], label=f"{name} (moving average of {window})", color=axes.lines[-1].get_color())
    axes.set_ylim(*_settled_range(averages))
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return "matplotlib"


def _settled_range(curves: dict[str, list[float]], margin: float = 0.25) -> tuple[float, float]:
    """The y range of ``curves`` after their first 5% of steps, widened by ``margin`` of itself on both sides:
    the losses of the first few steps are often tens of times larger than the rest and would flatten it."""
    settled = [value for curve in curves.values() for value in curve[len(curve) // 20 :]] or [0.0]
    low, high = min(settled), max(settled)
    pad = margin * (high - low) or 1.0
    return low - pad, high + pad


_CURVE_COLOURS = ((0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.1, 0.6, 0.2))


def _draw_curves_without_matplotlib(path: Path, series: dict[str, list[float]], height: int = 240, width: int = 480) -> None:
    canvas = torch.ones(3, height, width)
    canvas[:, height // 2, :] = 0.85  # a faint centre line as the only guide
    values = [v for curve in series.values() for v in curve]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = (high - low) or 1.0
    for colour, curve in zip(_CURVE_COLOURS, series.values()):
        for index, value in enumerate(curve):
            column = round(index * (width - 1) / max(1, len(curve) - 1))
            row = round((high - value) / span * (height - 1))
            canvas[:, max(0, row - 1) : row + 1, column] = torch.tensor(colour)[:, None]
    write_png(path, canvas)


# ------------------------------------------------------------------------------------------------ the demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ganops.recipes import RECIPES

    parser.add_argument(
        "--recipe", choices=tuple(RECIPES), default=None,
        help="train one of the classic GANs' recipes (ganops/recipes.py) instead of --model/--loss; --d-steps and "
        "--loss do not apply (each recipe takes its paper's D steps); SeqGAN prints sentences",
    )
    parser.add_argument("--model", choices=models.MODELS, default="sagan", help="default: %(default)s")
    parser.add_argument(
        "--steps", type=int, default=None,
        help="training steps: --d-steps D steps, then one G step (default: 1000; with --recipe the recipe's demo length)",
    )
    parser.add_argument("--d-steps", type=int, default=2, help="D steps per G step, each on a new batch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--loss", choices=LOSSES, default="hinge", help="wgan-gp adds the gradient penalty to the D step (default: %(default)s)")
    parser.add_argument(
        "--image-size", type=int, default=16,
        help="a power of two >= 8; SAGAN's self-attention runs on the 32x32 map, or on the whole image when it is "
        "smaller. 16 learns shapes within a few CPU minutes; 32 took 5.9x as long per step on 2 CPU cores (default: %(default)s)",
    )
    parser.add_argument("--max-shapes", type=int, default=2, help="shapes per training image, 1 to this (default: %(default)s)")
    widths = ", ".join(f"{model} {settings['width']}" for model, settings in DEMO_SETTINGS.items())
    parser.add_argument("--width", type=int, default=None, help=f"channel width (default per model: {widths})")
    parser.add_argument("--minibatch-stddev", action="store_true", help="add the minibatch stddev head to D")
    parser.add_argument("--output", default="ganops-demo", help="folder for samples.png and losses.png (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda; default: cuda if available")
    parser.add_argument("--backend", default=None, help="ganops backend for every op; default: auto")
    parser.add_argument("--seed", type=int, default=0, help="seeds the models, the data and the noise (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` says, write both PNGs; returns the PNG paths, the training time and the loss history."""
    from tqdm import tqdm

    if args.steps is None:
        args.steps = 1000
    if args.steps < 1 or args.d_steps < 1 or args.batch_size < 2:
        raise SystemExit(
            f"demo: --steps and --d-steps must be >= 1 and --batch-size >= 2, got {args.steps}, {args.d_steps} and "
            f"{args.batch_size}"
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    z_dim = 64
    trainer = make_trainer(
        args.model, args.loss, args.image_size, args.width, z_dim, minibatch_stddev=args.minibatch_stddev,
        backend=args.backend, device=device,
    )
    data = torch.Generator().manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    def next_real_batch() -> Tensor:
        return random_batch(args.batch_size, data, args.image_size, args.max_shapes).to(device)

    started = time.perf_counter()
    with tqdm(range(args.steps), desc=f"{args.model} {args.loss}", unit="step") as progress:
        for step in progress:
            for _ in range(args.d_steps - 1):
                trainer.discriminator_step(next_real_batch(), torch.randn(args.batch_size, z_dim, device=device))
            z = torch.randn(2, args.batch_size, z_dim, device=device)
            result = trainer.step(next_real_batch(), z[0], z[1])
            if step % 10 == 0 or step == args.steps - 1:
                elapsed = time.perf_counter() - started
                progress.set_postfix(
                    loss_d=f"{float(result['d']):.3f}", loss_g=f"{float(result['g']):.3f}",
                    gp=f"{float(result['penalty']):.3f}", steps_per_s=f"{(step + 1) / elapsed:.2f}",
                )
    seconds = time.perf_counter() - started
    trainer.generator.eval()
    with torch.no_grad():
        samples = trainer.generator(torch.randn(48, z_dim, device=device))
    reals = random_batch(16, torch.Generator().manual_seed(args.seed + 1), args.image_size, args.max_shapes)
    scale = max(1, 64 // args.image_size)
    grid = torch.cat([image_grid(samples, 8, scale), image_grid(reals, 8, scale)], dim=1)
    samples_path, curve_path = output / "samples.png", output / "losses.png"
    write_png(samples_path, grid)
    kind = write_loss_curve(curve_path, trainer.history, f"{args.model}, {args.loss}, batch {args.batch_size}")
    print(f"trained {args.steps} steps in {seconds:.1f} s ({args.steps / seconds:.2f} steps/s) on {device}")
    print(f"samples (6 rows generated, 2 rows real below): {samples_path}")
    print(f"loss curve ({kind}): {curve_path}")
    return {"samples": samples_path, "losses": curve_path, "seconds": seconds, "history": trainer.history}


# Series of a recipe's history that are not losses (schedules, metrics): printed, not plotted.
_NOT_LOSSES = ("alpha", "k", "grammatical")


def run_recipe(args: argparse.Namespace) -> dict:
    """Train the recipe ``args.recipe`` (:mod:`ganops.recipes`) with a progress bar; write ``samples.png`` (or print
    sentences, for SeqGAN) and ``losses.png``; returns the paths, the training time and the history."""
    from tqdm import tqdm

    from ganops import data, recipes

    recipe_class = recipes.RECIPES[args.recipe]
    steps = recipe_class.demo_steps if args.steps is None else args.steps
    if steps < 1 or args.batch_size < 2:
        raise SystemExit(f"demo: --steps must be >= 1 and --batch-size >= 2, got {steps} and {args.batch_size}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = recipes.RecipeConfig(
        image_size=args.image_size, width=args.width or recipe_class.demo_width, z_dim=32, batch_size=args.batch_size, steps=steps,
        seed=args.seed, backend=args.backend, device=device, options=recipe_class.demo_options,
    )
    recipe = recipes.build(args.recipe, config)
    quality = recipes.learning_metric(recipe, args.seed)
    untrained = quality()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tqdm(range(steps), desc=args.recipe, unit="step") as progress:
        for step in progress:
            result = recipe.step()
            if step % 10 == 0 or step == steps - 1:
                rate = (step + 1) / (time.perf_counter() - started)
                progress.set_postfix({**{name: f"{value:.3f}" for name, value in result.items()}, "steps_per_s": f"{rate:.2f}"})
    seconds = time.perf_counter() - started
    print(f"trained {steps} steps in {seconds:.1f} s ({steps / seconds:.2f} steps/s) on {device}")
    paths = {}
    if args.recipe == "seqgan":
        sentences = recipe.sample(12)
        for row in sentences:
            print("  ", data.sentence_text(row))
    else:
        samples = recipe.sample(48)
        scale = max(1, 64 // args.image_size)
        grid = image_grid(samples, 8, scale)
        if args.recipe != "cyclegan":
            reals = random_batch(16, torch.Generator().manual_seed(args.seed + 1), args.image_size)
            grid = torch.cat([grid, image_grid(reals, 8, scale)], dim=1)
        paths["samples"] = output / "samples.png"
        write_png(paths["samples"], grid)
        layout = "rows of input, G(input), true colour swap" if args.recipe == "cyclegan" else "6 rows generated, 2 rows real below"
        print(f"samples ({layout}): {paths['samples']}")
        if args.recipe == "cyclegan":
            print(
                f"translation error |G(a) - swap(a)|: {recipe.translation_error():.3f} "
                f"(the identity map's: {recipe.identity_error():.3f})"
            )
        else:
            passed = float(data.looks_like_shapes(samples).float().mean())
            print(f"samples that look like shapes (ganops.data.looks_like_shapes): {passed:.0%} of {samples.shape[0]}")
    print(f"{quality.__doc__}: {quality():.3f} (untrained: {untrained:.3f})")
    curves = {name: values for name, values in recipe.history.items() if name not in _NOT_LOSSES}
    paths["losses"] = output / "losses.png"
    kind = write_loss_curve(paths["losses"], curves, f"{args.recipe}, batch {args.batch_size}")
    print(f"loss curve ({kind}): {paths['losses']}")
    return {**paths, "seconds": seconds, "history": recipe.history}


def main(args: argparse.Namespace) -> int:
    if getattr(args, "recipe", None):
        run_recipe(args)
    else:
        run(args)
    return 0
