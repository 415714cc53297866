"""The `moss` subcommands' implementations, one module per group; `orchestrator/cli.py` parses."""
