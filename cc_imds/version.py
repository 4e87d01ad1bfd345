"""The version of cc-imds: read by packaging, sent as the User-Agent, part of the validation cache's key."""

__version__ = "0.1.0"
