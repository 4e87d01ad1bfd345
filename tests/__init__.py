"""The cc-imds tests: a package, so `tests.*` imports work under any runner, not just `python -m pytest`."""
