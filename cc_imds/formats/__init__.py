"""The languages outputs are written in: environment-file formats and their exact quoting, the
sandboxed template language of `files:`, and the variable names an output may never set.

Both the declaration's checks and rendering use them, and `get --shell` quotes with them, so
they import nothing of cc_imds above the kernel.
"""
