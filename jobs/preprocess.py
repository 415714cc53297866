"""`ray job submit ... -- python jobs/preprocess.py CONFIG [--set a.b=c ...]`: LeafInstruct -> shards."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
