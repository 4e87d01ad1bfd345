"""What IMDS serves about Auto Scaling: the lifecycle state an instance is moving to.

`meta-data/autoscaling/target-lifecycle-state` holds the steady state Auto Scaling moves the
instance to; it is a 404 on an instance in no Auto Scaling group. The watcher turns its
changes into commands, and the emulator serves it.
"""

LIFECYCLE_PATH = "meta-data/autoscaling/target-lifecycle-state"
# The states Auto Scaling documents; `Warmed:*` ones only with a warm pool.
LIFECYCLE_STATES = ("InService", "Terminated", "Detached", "Standby",
                    "Warmed:Stopped", "Warmed:Running", "Warmed:Hibernated", "Warmed:Terminated")
WARMED = "Warmed:"  # the prefix of every warm-pool state
