"""`ray job submit ... -- python jobs/evaluate.py [CONFIG] --run RUN_ID [--interleavedbench FILE --judge]`.

Scores a training run's final adapter: held-out loss / perplexity on the shards, MagicBrush-style
editing metrics, InterleavedBench answers (and judge scores); results go to MLflow, linked to the run.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
