"""The key-value client: `python examples/kv/client.py get KEY | put KEY VALUE |
delete KEY | keys [PREFIX]`. Waits up to 10 s for the server to register."""

import sys

from protocol import NAME, Delete, Get, Keys, Put

import kernel

USAGE = "usage: client.py get KEY | put KEY VALUE | delete KEY | keys [PREFIX]"
REQUESTS = {"get": Get, "put": Put, "delete": Delete, "keys": Keys}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in REQUESTS:
        print(USAGE, file=sys.stderr)
        return 2
    with kernel.connect() as k:
        kv = kernel.ServiceClient.lookup(k, NAME, timeout=10.0)
        try:
            result = kv.call(REQUESTS[argv[0]](*argv[1:]), timeout=5.0)
        except KeyError as e:  # raised by the server's handler, re-raised here
            print(f"no such key: {e.args[0]}", file=sys.stderr)
            return 1
    if isinstance(result, list):
        for key in result:
            print(key)
    elif result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
