"""`ray job submit ... -- python jobs/sweep.py SPACE [--set a.b=c ...] [--name N] [--resume | --resume-or-start]`:
a Tune sweep."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
