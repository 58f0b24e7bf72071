"""The ``minimind-edu`` command line; each subcommand calls the same library code as the notebooks."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minimind-edu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
