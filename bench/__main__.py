"""`python -m bench <figure>|all [--size tiny|full]`."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from bench import FIGURES
from bench.common import SIZES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="evse-agent benchmarks (issue 6); figures are printed, never asserted",
        epilog="figures: " + "; ".join(f"{name}: {text}" for name, text in FIGURES.items()),
    )
    parser.add_argument("figure", choices=[*FIGURES, "all"])
    parser.add_argument("--size", choices=SIZES, default="full",
                        help="tiny: seconds, for the test suite; full: the sizes the issue asks for (default)")
    args = parser.parse_args(argv)
    names = list(FIGURES) if args.figure == "all" else [args.figure]
    missed: list[str] = []
    started = time.monotonic()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        report = module.run(args.size)
        missed += [f"{name}: {label}" for label, met in report.targets if not met]
    if len(names) > 1:
        print(f"\n== summary ({time.monotonic() - started:.0f} s) ==")
        print("targets missed: " + ("; ".join(missed) if missed else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
