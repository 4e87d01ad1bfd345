"""Commands for people and scripts that are not the boot path: `get`, `scan`, `enable-module`.
"""
