"""`vmae-fast` command line: one subcommand per section below; each section owns its arguments and its runner.

Fatal problems (bad arguments, a model that cannot load, an output that cannot be written) end with a one-line
message and a non-zero exit; set VMAE_FAST_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


# --- info ------------------------------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a model's config, parameter count, input shape and preprocessing")
    p.add_argument("model", help="HF directory, original .pth, hub id in the local cache, or random:<preset>")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    raise NotImplementedError  # filled by the foundation work


# --- entry point -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmae-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info,):
        add(sub)
    return parser


class FatalError(Exception):
    """A problem that ends the command with a one-line message and exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("vmae-fast: interrupted", file=sys.stderr)
        return 130
    except (FatalError, ValueError, TypeError, OSError, KeyError) as e:
        if os.environ.get("VMAE_FAST_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"vmae-fast {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
