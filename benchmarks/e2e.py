"""End to end: one whole training step (D step with the WGAN-GP penalty, then G step) of a SAGAN-128-like and a
DCGAN model, ganops vs the same model built from reference ops (``use_reference_ops=True``: torch's spectral
norm parametrization and the eager reference attention, minibatch stddev and penalty) vs torch.compile.

``python -m ganops bench --e2e [--quick] [--device cpu|cuda]`` writes ``e2e.{json,md}`` and, with matplotlib,
``e2e.png`` into ``benchmarks/results/<device>/``.

torch.compile: the compiled step fails on the penalty's double backward (AOTAutograd does not compile
``create_graph=True`` backward through a compiled graph); the harness records the error in the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import Case, compiled, ganops_implementations
from ganops.training import make_trainer

OP = "e2e"
Z_DIM = 128


def _configurations(device: torch.device, quick: bool) -> list[dict]:
    """(label, model, image size, width, batch): full sizes on a GPU; shrunk on the CPU, labelled as such."""
    if device.type == "cuda":
        return [
            {"name": "SAGAN-128-like", "model": "sagan", "size": 128, "width": 64, "batch": 32 if quick else 64},
            {"name": "DCGAN-64", "model": "dcgan", "size": 64, "width": 64, "batch": 64},
        ]
    return [
        {"name": "SAGAN (CPU-sized)", "model": "sagan", "size": 32, "width": 8 if quick else 16, "batch": 8},
        {"name": "DCGAN (CPU-sized)", "model": "dcgan", "size": 32, "width": 16 if quick else 32, "batch": 16},
    ]


def _step_function(config: dict, device: torch.device, use_reference_ops: bool, backend: str | None):
    torch.manual_seed(0)
    trainer = make_trainer(
        config["model"], "wgan-gp", config["size"], config["width"], Z_DIM, minibatch_stddev=True,
        use_reference_ops=use_reference_ops, backend=backend, device=device,
    )

    def step(real, z_d, z_g):
        return trainer.step(real, z_d, z_g, record=False)

    return step


def cases(device: torch.device, quick: bool) -> list[Case]:
    result = []
    for config in _configurations(device, quick):

        def setup(config=config):
            batch, size = config["batch"], config["size"]
            real = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            return real, torch.randn(batch, Z_DIM, device=device), torch.randn(batch, Z_DIM, device=device)

        implementations = {
            "eager": _step_function(config, device, True, None),
            "torch.compile": compiled(_step_function(config, device, True, None)),
        }
        implementations.update(
            ganops_implementations(lambda backend, config=config: _step_function(config, device, False, backend), device)
        )
        result.append(
            Case(
                label=f"{config['name']} {config['size']}x{config['size']} width {config['width']} B={config['batch']} float32",
                direction="train step (D + WGAN-GP, G)",
                setup=setup,
                implementations=implementations,
            )
        )
    return result


def write_plot(report: dict, path: Path) -> bool:
    """A bar chart of the median step time per implementation and case; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, len(report["cases"]), figsize=(6 * len(report["cases"]), 4), squeeze=False)
    for axis, case in zip(axes[0], report["cases"]):
        names = [name for name, entry in case["implementations"].items() if "median_ms" in entry]
        times = [case["implementations"][name]["median_ms"] for name in names]
        axis.barh(names, times, color=["#888888" if name == "eager" else "#3366cc" for name in names])
        axis.set_xlabel("median ms per training step")
        axis.set_title(case["label"], fontsize=9)
        for index, name in enumerate(names):
            speedup = case["implementations"][name].get("speedup_vs_eager")
            if speedup:
                axis.text(times[index], index, f" {speedup:.2f}x", va="center", fontsize=8)
    figure.suptitle(f"one training step on {report['environment']['device']}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def main(args: argparse.Namespace) -> int:
    import sys

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    output = Path(args.output) if args.output else harness.RESULTS_ROOT / harness.device_slug(device)
    rates = harness.measure_rates(device, args.quick)
    report = harness.run_op(sys.modules[__name__], device, args.quick, output, rates)
    print((output / f"{OP}.md").read_text())
    plot = output / f"{OP}.png"
    print(f"plot: {plot}" if write_plot(report, plot) else "plot skipped: matplotlib is not installed")
    return 0
