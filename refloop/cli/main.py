"""`refloop`: run the stack, drive and inspect loops from a terminal."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES = [
    "refloop.cli.dev",
    "refloop.cli.demo",
    "refloop.cli.loops",
    "refloop.cli.inbox",
    "refloop.cli.operate",
    "refloop.cli.worklist",
    "refloop.cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `send KIND --referral X a=1 b=2`: argparse leaves field=value pairs after options here.
        if hasattr(args, "fields") and all("=" in e and not e.startswith("-") for e in extra):
            args.fields += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as err:
        print(f"refloop: {err}", file=sys.stderr)
        return 2


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


if __name__ == "__main__":
    sys.exit(main())
