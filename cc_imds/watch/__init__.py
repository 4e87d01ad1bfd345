"""After boot: `cc-imds watch` keeps outputs true and turns instance events into commands. The
boot run hands over through the run directory; `status` reads what the watcher wrote there.
"""
