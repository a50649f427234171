"""``attngen cache``: see and prune the on-disk cache (list, size, clear)."""
from __future__ import annotations

import argparse
import time

DESCRIPTION = """\
attngen keeps what it generates in a cache folder: $ATTNGEN_CACHE_DIR if set, else the user
cache folder (on Linux ~/.cache/attngen). It holds one entry per compiled kernel (the Triton
module, its IR and a manifest, and on a GPU an index of Triton's binaries), the lowered IR per
variant (so a new process skips the compiler passes), and the tuning records that
`attngen tune` writes. Entries are never removed by attngen itself; after upgrading attngen or
Triton, or editing templates, old entries are no longer used and only take space.
"""

EPILOG = """\
subcommands:
  list                      one line per kernel entry: key, kernel name, size, age, and
                            "damaged" for an entry a crash or a full disk left incomplete
                            (the next compile rebuilds it)
  size                      bytes used by kernels, lowered IR, tuning records and the rest
  clear [--older-than DAYS] [--records]
                            remove kernel entries (all, or those created more than DAYS
                            ago) and the lowered IR; tuning records only with --records.
                            Entries another process is building right now are skipped.
                            Safe while other processes run: those keep the kernels they
                            loaded, and rebuild what they need next.

examples:
  attngen cache list
  attngen cache size
  attngen cache clear --older-than 30
  ATTNGEN_CACHE_DIR=/scratch/attngen attngen cache clear --records
"""


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list, measure or clear the kernel cache",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("action", choices=("list", "size", "clear"), metavar="{list,size,clear}",
                   help="what to do (see below)")
    p.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                   help="clear: only entries created more than DAYS ago (a number, e.g. 30 or 0.5)")
    p.add_argument("--records", action="store_true", help="clear: the tuning records too")
    p.set_defaults(run=run)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"--older-than wants a number of days >= 0, got '{text}'")
    return days


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def run(args: argparse.Namespace) -> int:
    from .runtime.cache_admin import clear, entries, human, usage
    from .runtime.cache_dir import configured_root

    root = configured_root()
    if args.action != "clear" and (args.older_than is not None or args.records):
        from .cli import CLIError

        raise CLIError("--older-than and --records are options of `attngen cache clear`")
    if args.action == "list":
        found = entries(root)
        now = time.time()
        for e in found:
            state = "" if e.valid else "  damaged"
            print(f"{e.key[:16]}  {e.name:<32}  {human(e.size):>9}  {_age(now - e.created):>7} old{state}")
        print(f"{len(found)} kernel entries in {root}")
    elif args.action == "size":
        used = usage(root)
        for kind, n in used.items():
            print(f"{kind:<8} {human(n):>9}")
        print(f"{'total':<8} {human(sum(used.values())):>9}  in {root}")
    else:
        days = args.older_than
        result = clear(root, None if days is None else days * 86400, records=args.records)
        busy = f", {result.skipped} skipped (being built by another process)" if result.skipped else ""
        print(f"removed {result.entries} kernel entries{busy}, freed {human(result.bytes)} in {root}")
    return 0
