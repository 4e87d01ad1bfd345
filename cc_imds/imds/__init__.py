"""IMDS over HTTP: the IMDSv2 client and the small HTTP/1.1 transport under it, its settings and
retry timing, the in-memory metadata tree that `plan --metadata` and the emulator answer from, and
the Auto Scaling lifecycle states IMDS names.

Standard library only, and nothing imported that a cold `cc-imds get` does not use: scripts call
`get` where they called curl.
"""
