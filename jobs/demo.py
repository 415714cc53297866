"""`ray job submit ... -- python jobs/demo.py [--steps N]`: the tiny-backbone demo as a Ray job."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
