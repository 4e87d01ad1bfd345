"""The declaration: bounded reading of cloud-config and drop-ins, which drop-ins to trust, the
schema and the meaning checks, merging into one `Declaration`, and the cache of validated files.
"""
