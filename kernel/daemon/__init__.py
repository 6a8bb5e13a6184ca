"""The kernel daemon: owns every IPC object and a capability table per process."""
