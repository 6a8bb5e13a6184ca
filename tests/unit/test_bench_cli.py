"""kernel.bench.cli: options that the integration smoke test does not run."""

from __future__ import annotations

import pytest

from kernel.bench.cli import _parser


def test_the_clients_sweep_takes_its_own_call_count() -> None:
    """`--roundtrips` sized both the latency rows and the sweep's points: asking for
    64,000 calls per point ran every latency row 64,000 times first."""
    args = _parser().parse_args(["--clients", "32", "--client-calls", "64000"])
    assert (args.clients, args.client_calls, args.roundtrips) == ((32,), 64000, None)
    assert _parser().parse_args(["--clients", "4"]).client_calls is None  # --roundtrips
    for bad in ("0", "-5", "many"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--client-calls", bad])
