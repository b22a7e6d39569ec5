"""``python -m ganops info | bench | check-gpu-code | demo``."""

from __future__ import annotations

import argparse
import sys

from ganops import _cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, devices, and which backend runs which op here")
    bench = commands.add_parser("bench", help="benchmark the ops against eager and torch.compile baselines")
    bench.add_argument("--op", action="append", help="only this op (repeatable); default: all")
    bench.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    bench.add_argument("--device", default=None, help="cpu or cuda; default: cuda if available")
    bench.add_argument("--output", default=None, help="results folder; default benchmarks/results/<device>/")
    bench.add_argument(
        "--write-rankings",
        action="store_true",
        help="also record the measured backend ranking per op and device in ganops/measured_rankings.json",
    )
    bench.add_argument(
        "--e2e",
        action="store_true",
        help="benchmark one whole training step (G step + D step with the penalty) of SAGAN and DCGAN instead of ops",
    )
    check = commands.add_parser(
        "check-gpu-code", help="compile every Triton and CUDA kernel for sm_80/sm_90 without a GPU and check budgets"
    )
    _cli.add_check_gpu_code_arguments(check)
    demo = commands.add_parser("demo", help="train a small SAGAN or DCGAN on generated shapes; writes samples and losses")
    from ganops import demo as demo_module

    demo_module.add_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo_module.main(args)
    if args.command == "check-gpu-code":
        return _cli.check_gpu_code(args)
    if args.command == "info":
        print(_cli.info_text())
        return 0
    return _cli.run_benchmarks(args)


if __name__ == "__main__":
    sys.exit(main())
