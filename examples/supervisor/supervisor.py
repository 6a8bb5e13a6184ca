"""A supervisor that restarts its workers: SIGCHLD and SIGTERM on capabilities.

    python examples/supervisor/supervisor.py

The supervisor starts three workers and asks the kernel to set CHLD in its own
notification when any of them ends (`Process.monitor`). Its `kernel.Signals`
handler reaps whoever ended and starts a replacement, as a SIGCHLD handler would.
Each worker takes its signals from a notification of its own; the supervisor keeps
the only SIGNAL capability to it, so nobody else can stop a worker. At the end it
sends each one TERM, which the workers catch to stop cleanly.
"""

import sys
import threading

import kernel
from kernel import Rights, Sig


def worker(mode: str) -> None:
    with kernel.connect() as k:
        if mode == "crash":
            sys.exit(3)  # fails once; its replacement runs steady
        stop = threading.Event()
        on_term = {Sig.TERM: lambda sig: stop.set()}  # its default: ended by the OS
        with kernel.Signals(k.inherited["signals"], on_term):
            stop.wait(30.0)


class Supervisor:
    def __init__(self, k: kernel.Kernel) -> None:
        self.k = k
        self.chld = k.notification()  # CHLD arrives here
        self.workers: dict[str, tuple[kernel.Process, kernel.NotificationCap]] = {}
        self.lock = threading.Lock()  # the handler's thread against the main one
        self.stopping = False
        self.restarted = threading.Event()

    def start(self, name: str, mode: str) -> None:
        signals = self.k.notification()
        proc = self.k.spawn(
            [sys.executable, __file__, "worker", mode],
            caps={"signals": signals.copy(Rights.WAIT | Rights.COPY)},
        )
        proc.monitor(self.chld)  # the kernel sets CHLD when it ends
        self.workers[name] = (proc, signals)

    def on_chld(self, sig: Sig) -> None:
        with self.lock:
            if self.stopping:
                return
            for name, (proc, _) in list(self.workers.items()):
                if proc.popen.poll() is not None:  # this one ended: reap, replace
                    print(f"{name} exited with {proc.wait(timeout=10.0)}: restarting it")
                    self.start(name, "steady")
                    self.restarted.set()

    def stop(self) -> list[int]:
        with self.lock:
            self.stopping = True
            for _, signals in self.workers.values():
                signals.signal(Sig.TERM)
        return [proc.wait(timeout=10.0) for proc, _ in self.workers.values()]


def main() -> None:
    with kernel.connect() as k:  # starts a private kernel if none runs
        sup = Supervisor(k)
        with kernel.Signals(sup.chld, {Sig.CHLD: sup.on_chld}):
            with sup.lock:
                for name, mode in [("w0", "steady"), ("w1", "crash"), ("w2", "steady")]:
                    sup.start(name, mode)
            print("started w0, w1, w2", flush=True)
            sup.restarted.wait(30.0)
            codes = sup.stop()
        print(f"stopped {', '.join(sup.workers)} with TERM: exit codes {codes}")


if __name__ == "__main__":
    worker(sys.argv[2]) if sys.argv[1:2] == ["worker"] else main()
