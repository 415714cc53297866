"""`ray job submit ... -- python jobs/generate.py [CONFIG] --run RUN_ID --prompt "..." [--image F]`: one answer."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
