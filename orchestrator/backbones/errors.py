"""Errors a backbone raises about its input (torch-free, so the data pipeline's stages can catch them cheaply)."""


class UnencodableError(ValueError):
    """A record this backbone cannot encode (the data pipeline counts it as a reject with this reason)."""
