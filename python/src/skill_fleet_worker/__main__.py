"""``python -m skill_fleet_worker worker ...``: the remote worker (see :mod:`.worker`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("worker",):
        print(
            "usage: python -m skill_fleet_worker worker --server URL --type TYPE [options] "
            "-- PROGRAM [ARGS...]\n"
            "       (python -m skill_fleet_worker worker --help for the options)",
            file=sys.stderr,
        )
        return 2
    from .worker import main as worker_main

    return worker_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
