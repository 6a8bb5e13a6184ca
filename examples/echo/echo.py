"""Echo over an endpoint: the parent spawns a server and hands it the endpoint.

    python examples/echo/echo.py

Starts a private kernel if none runs (it exits by itself when idle).
"""

import sys

import kernel


def serve() -> None:
    k = kernel.connect()
    ep = k.inherited["echo"]
    while True:
        msg = ep.recv()  # msg.data (bytes), msg.badge, msg.sender.pid / .uid / .gid
        msg.reply(msg.data.upper())


if sys.argv[1:] == ["serve"]:
    serve()
else:
    with kernel.connect() as k:
        ep = k.endpoint()
        server = k.spawn([sys.executable, __file__, "serve"], caps={"echo": ep})
        reply = ep.call(b"ping", timeout=5.0)
        print(f"{reply.data!r} from pid {reply.sender.pid}")
        n = k.notification()
        n.signal(0b101)
        print(f"notification word: {n.wait(timeout=1.0):#b}")
        server.kill()
        server.wait(timeout=5.0)  # returns once the kernel has cleaned the process up
        try:
            ep.call(b"x", timeout=0.2)  # nobody receives any more
        except TimeoutError as e:  # kernel.CallTimeoutError subclasses it
            print(f"as expected: {e}")
