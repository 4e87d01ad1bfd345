"""Code that never runs at boot: the IMDS emulator, its control endpoint, and the pytest plugin
(`-p cc_imds.testing.pytest_plugin`) for projects that test their own IMDS consumers.
"""
