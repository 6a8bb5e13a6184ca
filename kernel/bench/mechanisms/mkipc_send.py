"""One-way throughput of mkipc's send path: EndpointCap.send from this process to a receiver.

A timed operation is a burst of N sends back to back, then one empty call that the receiver
answers with the number of messages it took since the last such call (8 bytes); a burst whose
count differs fails the row. N follows oneway_os.burst_size, as for the OS rows. Payloads
above kernel.MAX_PAYLOAD are refused by mkipc by design; that row says so.
"""

from __future__ import annotations

import sys

import kernel
from kernel.bench.mechanisms import PeerLostError, make_payload, register
from kernel.bench.mechanisms.mkipc_call import _START_TIMEOUT_S, _MkipcMechanism, serve_role
from kernel.bench.mechanisms.oneway_os import MAX_BATCH, burst_size


@register
class MkipcSend(_MkipcMechanism):
    name = "mkipc.send"
    peer_role = "sink"
    batch = MAX_BATCH  # > 1 marks a throughput row even before setup() picks the burst size

    def setup(self, payload_size: int) -> None:
        if payload_size > kernel.MAX_PAYLOAD:
            raise ValueError(
                f"mkipc messages carry at most {kernel.MAX_PAYLOAD} bytes; "
                "bulk data goes through memory objects"
            )
        self.batch = burst_size(payload_size)
        self._payload = make_payload(payload_size)
        self._start_kernel()
        assert self._k is not None
        self._ep = self._k.endpoint()
        self._spawn({"ep": self._ep})
        self._ep.call(b"", timeout=_START_TIMEOUT_S)  # the receiver is up

    def roundtrip(self) -> None:
        send, payload = self._ep.send, self._payload
        for _ in range(self.batch):
            send(payload)
        received = int.from_bytes(self._ep.call(b"").data, "little")
        if received != self.batch:
            raise PeerLostError(f"the receiver counted {received} of {self.batch} messages")


def _sink(k: kernel.Kernel) -> None:
    ep = k.inherited["ep"]
    assert isinstance(ep, kernel.EndpointCap)
    received = 0
    while True:  # ends when the benchmark tears the kernel down
        msg = ep.recv()
        if len(msg.data):
            received += 1
        else:  # the burst's closing call: answer with the count, start the next burst
            msg.reply(received.to_bytes(8, "little"))
            received = 0


if __name__ == "__main__":
    serve_role(sys.argv[1:], {"sink": _sink})
