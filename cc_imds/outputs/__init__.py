"""Outputs: declaration + values -> the exact bytes of every file (formats, templates rendered in a
bounded child, secrets scrubbed from messages), then written all or nothing.
"""
