"""``python -m ganops bench``: run the benchmarks of the chosen ops and write their results."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch

from benchmarks import harness

OPS = ("minibatch_stddev", "spectral_norm", "attention", "gradient_penalty", "minibatch_discrimination")
RANKINGS_PATH = Path(__file__).resolve().parents[1] / "ganops" / "measured_rankings.json"


def write_rankings(reports: list[dict], output: Path) -> None:
    """Record, per op and device type, the backends ordered by measured speed (read by ``backend="auto"``)."""
    rankings = json.loads(RANKINGS_PATH.read_text()) if RANKINGS_PATH.exists() else {}
    for report in reports:
        order, geomean = harness.ranking(report)
        source = output / f"{report['op']}.json"
        try:
            source = source.resolve().relative_to(RANKINGS_PATH.parents[1])
        except ValueError:
            pass
        rankings.setdefault(report["op"], {})[report["environment"]["device_type"]] = {
            "ranking": order,
            "geomean_speedup_vs_reference": {backend: round(value, 3) for backend, value in geomean.items()},
            "device": report["environment"]["device"],
            "source": str(source),
        }
    RANKINGS_PATH.write_text(json.dumps(rankings, indent=2, sort_keys=True) + "\n")
    print(f"rankings written to {RANKINGS_PATH}")


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = args.op or list(OPS)
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise SystemExit(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    output = Path(args.output) if args.output else harness.RESULTS_ROOT / harness.device_slug(device)
    rates = harness.measure_rates(device, args.quick)
    print(f"{harness.device_description(device)}: copy bandwidth {rates.copy_bandwidth / 1e9:.1f} GB/s")
    reports = []
    for op in ops:
        module = importlib.import_module(f"benchmarks.{op}")
        reports.append(harness.run_op(module, device, args.quick, output, rates))
        print((output / f"{op}.md").read_text())
    if args.write_rankings:
        write_rankings(reports, output)
    return 0
