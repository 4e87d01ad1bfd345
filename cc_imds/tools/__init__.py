"""Commands for people and scripts: `validate`, `plan` and `apply` (the boot path's pipeline,
from the command line), and `get`, `scan`, `enable-module`, which are not the boot path.
"""
