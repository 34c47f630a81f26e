"""Decode HR training images once into a store that training reads without decoding.

    python -m jaxsr.data.prepare --output STORE DIR [DIR ...] [--workers N] [--no-progress]
    python -m jaxsr.data.prepare --verify STORE [--sources]

DIR entries are what ``data.train_dirs`` accepts: folders, globs or image files. Then train
with ``--config.data.train_dirs="('STORE',)"`` (see ``jaxsr.data.store`` for the format).

The conversion runs in ``--workers`` processes (default: one per CPU) with a progress bar.
A file that cannot be decoded is reported and left out; the others are still converted,
and the run ends with the list of failed files and exit status 1. Interrupt it at any
time: running the same command again skips the finished images. ``--verify`` re-hashes
every array (and with ``--sources`` every source file) against the manifest.
"""
from __future__ import annotations

import argparse
import sys

from jaxsr.data import store as store_lib


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsr.data.prepare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", metavar="DIR",
                        help="HR image folders, globs or files")
    parser.add_argument("--output", "-o", metavar="STORE", help="store folder to write")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per CPU; 0: this process)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verify", metavar="STORE",
                        help="check an existing store against its manifest instead")
    parser.add_argument("--sources", dest="verify_sources", action="store_true",
                        help="with --verify: also re-hash the source files that still exist")
    args = parser.parse_args(argv)

    if args.verify:
        if args.sources or args.output:
            parser.error("--verify takes no DIR and no --output")
        try:
            problems = store_lib.verify_store(args.verify, sources=args.verify_sources,
                                              progress=not args.no_progress)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for problem in problems:
            print(problem)
        print(f"{args.verify}: {'intact' if not problems else f'{len(problems)} problems'}")
        return 1 if problems else 0

    if not args.output or not args.sources:
        parser.error("give --output STORE and at least one DIR")
    try:
        result = store_lib.prepare_store(args.sources, args.output, workers=args.workers,
                                         progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"{result.store}: {result.images} images ({_gigabytes(result.array_bytes)}); "
          f"{result.written} converted in {result.seconds:.1f} s, {result.skipped} already "
          f"there" + (f", {result.removed} removed" if result.removed else ""))
    if result.failed:
        print(f"{len(result.failed)} files could not be decoded and are not in the store:")
        for source, reason in result.failed:
            print(f"  {source}: {reason}")
        return 1
    print(f"train on it with: --config.data.train_dirs=\"('{result.store}',)\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
