"""The run config's sections, one module per area; ``orchestrator/config.py`` assembles them into
RunConfig and re-exports them."""
