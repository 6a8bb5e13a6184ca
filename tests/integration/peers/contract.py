"""The issue's contract program, verbatim: run with no argument (it spawns itself)."""

# ruff: noqa: E401, I001
import sys, kernel


def serve():
    k = kernel.connect()
    ep = k.inherited["echo"]
    while True:
        msg = ep.recv()
        msg.reply(msg.data.upper())


if sys.argv[1:] == ["serve"]:
    serve()
else:
    with kernel.connect() as k:
        ep = k.endpoint()
        server = k.spawn([sys.executable, __file__, "serve"], caps={"echo": ep})
        assert ep.call(b"ping", timeout=5.0).data == b"PING"
        n = k.notification()
        n.signal(0b101)
        assert n.wait(timeout=1.0) == 0b101
        server.kill()
        server.wait(timeout=5.0)
        try:
            ep.call(b"x", timeout=0.2)
            raise SystemExit("call without a receiver returned")
        except TimeoutError:
            pass
