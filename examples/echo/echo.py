"""Echo through the name server (blocking face).

    python examples/echo/echo.py serve &    # registers "demo.echo"
    python examples/echo/echo.py            # looks it up (waits up to 10 s) and calls it

Either may start first. A private kernel starts on demand (it exits once idle).
"""

import sys

import kernel

with kernel.connect() as k:
    if sys.argv[1:] == ["serve"]:
        ep = k.endpoint()
        k.names.register("demo.echo", ep, mode=0o666)  # any user may look it up
        while True:
            msg = ep.recv()  # msg.data, msg.badge (one per lookup), msg.sender.pid/.uid/.gid
            msg.reply(msg.data.upper())
    else:
        echo = k.names.lookup("demo.echo", timeout=10.0)
        reply = echo.call(b"ping", timeout=5.0)
        print(f"{reply.data!r} from pid {reply.sender.pid}")
        try:
            echo.recv(timeout=0)  # lookup hands out SEND, never RECEIVE
        except PermissionError as e:
            print(f"as expected: {e}")
