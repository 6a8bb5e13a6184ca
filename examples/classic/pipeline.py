"""A pipe and a message queue between two processes, as in an operating-systems course.

    python examples/classic/pipeline.py

The parent writes lines of text into a pipe and closes its write end; the child
(which inherited the read end and a send-only capability to a queue) counts the
words of each line until EOF, sending one message of type 1 per line and a last
one of type 2 with the total. The parent takes the total first, by its type, then
the per-line counts in order.
"""

import sys

import kernel
from kernel import Rights

LINES = [b"the quick brown fox\n", b"jumps over\n", b"the lazy dog\n"]
PER_LINE, TOTAL = 1, 2  # message types


def child() -> None:
    with kernel.connect() as k:
        text, results = k.inherited["text"], k.inherited["results"]
        total = 0
        with text.makefile("r", timeout=10.0) as lines:  # a file: ends at EOF
            for line in lines:
                words = len(line.split())
                total += words
                results.send(str(words).encode(), mtype=PER_LINE, timeout=10.0)
        results.send(str(total).encode(), mtype=TOTAL, timeout=10.0)


def parent() -> None:
    with kernel.connect() as k:  # starts a private kernel if none runs
        r, w = k.pipe()
        q = k.queue(capacity=16)
        proc = k.spawn(
            [sys.executable, __file__, "child"],
            caps={"text": r, "results": q.copy(Rights.SEND | Rights.COPY)},
        )
        r.close()  # the child holds the read end now
        with w.makefile("wb", timeout=10.0) as out:  # one pipe write for all lines
            out.writelines(LINES)
        # closing the file closed w, the last writer: the child's next read is EOF
        total = q.recv(mtype=TOTAL, timeout=10.0)  # waits for the child's last message
        counts = [int(q.recv(mtype=PER_LINE, timeout=1.0).data) for _ in LINES]
        print(f"words per line {counts}, total {int(total.data)} from pid {total.sender.pid}")
        sys.exit(proc.wait(timeout=10.0))


if __name__ == "__main__":
    child() if sys.argv[1:] == ["child"] else parent()
