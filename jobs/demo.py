"""`ray job submit ... -- python jobs/demo.py [--out DIR]`: the demo (sample -> shards -> demo sweep -> report)."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
