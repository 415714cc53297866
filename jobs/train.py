"""`ray job submit ... -- python jobs/train.py CONFIG [--set a.b=c ...]`: fine-tune an adapter on the shards."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
