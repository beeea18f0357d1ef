"""`python -m ictl.data prepare NAME [--data_dir DIR]` and `python -m ictl.data list [--data_dir DIR]`."""
from __future__ import annotations

import argparse
import sys

from ictl.data import source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ictl.data", description="TFDS data sets for ictl (no TensorFlow)")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="write a scikit-learn set in TFDS's array_record layout")
    pr.add_argument("name", choices=source.DATASETS)
    pr.add_argument("--data_dir", default=None)
    ls = sub.add_parser("list", help="which data sets are prepared in data_dir")
    ls.add_argument("--data_dir", default=None)
    args = p.parse_args(argv)
    data_dir = args.data_dir or source.default_data_dir()
    if args.command == "list":
        for n in source.DATASETS:
            print(f"{n:14s} {'prepared' if source.is_prepared(n, data_dir) else 'not prepared'}")
        return 0
    try:
        path = source.prepare(args.name, data_dir)
    except ValueError as e:  # DataNotPrepared or an unwritable data_dir: one line, status 2
        print(f"ictl.data: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name}: prepared in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
