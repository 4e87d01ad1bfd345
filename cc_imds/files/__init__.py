"""File-system primitives every writer shares, one of each: paths confined under a root
(inside_root), the atomic replace (atomic), the trust check with every caller's rule
(trusted), the flock (lock), and the SELinux label a file's path should carry (labels).
"""
