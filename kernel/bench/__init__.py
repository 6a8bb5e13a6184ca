"""What `mkipc bench` runs: IPC round-trip latency of mkipc's paths and of the OS's own
mechanisms, measured in one interleaved run and reported as ratios (DESIGN §8).

- ``stats``: exact latency samples and percentiles.
- ``mechanisms``: the Mechanism interface, the registry and the OS baselines (``os_*``).
- ``runner``: runs mechanisms × payload sizes; CPU time, placement, environment.
- ``report``: terminal table, JSON, CSV, optional PNG plots.
- ``cli``: the command line.

This package imports nothing on purpose: every echo peer imports ``kernel.bench.mechanisms``,
and its start-up time should not grow with the report code.
"""
