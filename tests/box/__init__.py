"""Boot tests: a Debian VM with systemd and cloud-init's Ec2 datasource, against the emulator."""
