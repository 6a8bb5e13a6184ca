# process B
import kernel

with kernel.connect() as k:
    echo = k.names.lookup("demo.echo", timeout=10.0)
    assert echo.call(b"hi", timeout=1.0).data == b"hi!"
    try:
        echo.recv(timeout=0)
        raise SystemExit("a looked-up capability could receive")
    except PermissionError:
        pass
