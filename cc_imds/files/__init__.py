"""File-system primitives every writer shares: paths confined under a root, the run lock.
"""
