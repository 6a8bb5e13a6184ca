"""The other process of the pipe tests.

usage: pipe_peer.py ACT [ARG]
  write ARG    write ARG bytes of pattern() to "w" in writes of 10,000, then exit
  linger ARG   write ARG (text) to "w", then sleep a minute (the test kills it)
  drain        read "r" to EOF; send the number of bytes read on "back"
  lines ARG    print ARG numbered lines into w.makefile("w"), then close it
Every wait is bounded (20 s); the exit code is 0 when the act completed.
"""

from __future__ import annotations

import sys
import time

import kernel

LIMIT = 20.0


def pattern(n: int) -> bytes:
    """The bytes the tests expect: a sequence that shows any loss or reordering."""
    return bytes(i * 7 % 251 for i in range(n))


def main() -> int:
    act = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else ""
    with kernel.connect(autostart=False) as k:
        caps = k.inherited
        if act == "write":
            data = pattern(int(arg))
            for i in range(0, len(data), 10_000):
                assert caps["w"].write(data[i : i + 10_000], timeout=LIMIT) == len(
                    data[i : i + 10_000]
                )
        elif act == "linger":
            caps["w"].write(arg.encode(), timeout=LIMIT)
            time.sleep(60)
        elif act == "lines":
            with caps["w"].makefile("w", timeout=LIMIT) as out:
                for i in range(int(arg)):
                    print(f"line {i}: {'x' * (i % 50)}", file=out)
        elif act == "drain":
            total = 0
            while chunk := caps["r"].read(timeout=LIMIT):
                total += len(chunk)
            caps["back"].send(str(total).encode(), timeout=LIMIT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
