"""`mkipc`: run the kernel daemon, the demo, or the benchmark; inspect a running kernel."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel import Kernel, abi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mkipc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kernel", help="run the kernel daemon in the foreground")
    k.add_argument(
        "--socket",
        default=None,
        help="socket path (default: $MKIPC_SOCKET or a private per-user path)",
    )
    k.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this long with no process connected",
    )
    k.add_argument(
        "--spin-us",
        type=float,
        default=500.0,
        help="how long the kernel polls the rings after the last work (µs)",
    )
    k.add_argument(
        "--socket-mode",
        type=_octal_mode,
        default=0o600,
        metavar="MODE",
        help="permission of the socket, e.g. 0666 to let every uid connect (default 0600)",
    )
    k.add_argument(
        "--user-limit",
        type=_user_limit,
        action="append",
        default=[],
        metavar="NAME=N",
        help="what one uid's processes may keep in the kernel together, e.g. connections=64 "
        "or buffer-bytes=512m; NAME is one of connections, sessions, objects, "
        "memory-objects, buffer-bytes, memory-bytes (repeatable)",
    )
    k.add_argument(
        "--no-names", action="store_true", help="do not start the name server (services/names)"
    )
    k.add_argument("--log-level", default="INFO")

    names = sub.add_parser("names", help="list the name server's entries")
    names.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    names.add_argument("--socket", default=None, help="the kernel's socket path")
    names.add_argument("--json", action="store_true", help="one JSON object per entry")

    status = sub.add_parser("status", help="who holds what in the kernel (its ipcs)")
    status.add_argument("--socket", default=None, help="the kernel's socket path")
    status.add_argument("--json", action="store_true", help="the whole answer as JSON")
    status.add_argument(
        "--objects", action="store_true", help="also each object: holders, contents, waiters"
    )

    sub.add_parser("demo", help="start or reuse a kernel, call an echo server, show latency")
    sub.add_parser(
        "bench", help="the IPC latency workbench (see `mkipc bench --help`)", add_help=False
    )

    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench.cli import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "kernel":
        return _kernel(args)
    if args.command == "names":
        return _names(args)
    if args.command == "status":
        return _status(args)
    from . import demo

    return demo.main()


def _names(args: argparse.Namespace) -> int:
    """`mkipc names`: what the name server holds that this user may read."""
    import json

    k = _connect(args.socket, "names")
    if k is None:
        return 1
    with k:
        entries = k.names.list(args.prefix)
    if args.json:
        for e in entries:
            print(json.dumps({**e._asdict(), "rights": e.rights.name, "mode": f"{e.mode:#o}"}))
        return 0
    rows = [("NAME", "KIND", "OWNER", "MODE", "PID", "SERVED")]
    rows += [(e.name, e.kind, f"{e.uid}:{e.gid}", f"{e.mode:04o}", str(e.pid), str(e.served))
             for e in entries]  # fmt: skip
    _print_table(rows)
    if not entries:
        print("(no entries you may read)")
    return 0


def _connect(socket: str | None, command: str) -> Kernel | None:
    """A connection to a running kernel (never a new one), or None having said why."""
    import kernel

    try:
        return kernel.connect(socket, autostart=False)
    except kernel.PeerClosedError as err:
        print(f"mkipc {command}: {err}", file=sys.stderr)
        return None


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _status(args: argparse.Namespace) -> int:
    """`mkipc status`: who holds what in the kernel (Kernel.status)."""
    import json

    import msgspec

    k = _connect(args.socket, "status")
    if k is None:
        return 1
    with k:
        st = k.status()
    if args.json:
        print(json.dumps(msgspec.to_builtins(st)))
        return 0
    fds = "" if st.descriptor_limit < 0 else (
        f", descriptors {st.descriptors}/{st.descriptor_limit} "
        f"(the last {st.descriptor_reserve} for root)")  # fmt: skip
    print(f"kernel pid {st.pid} (uid {st.uid}), up {st.uptime_s:.0f} s, "
          f"{st.live_objects} live objects{fds}")  # fmt: skip
    rows = [("CONN", "PID", "UID:GID", "PARENT", "PENDING", "SESSIONS", "SPAWNED", "WATCHED",
             "CAPABILITIES")]  # fmt: skip
    for p in st.processes:
        caps = ", ".join(f"{n} {kind}" for kind, n in p.caps.items()) or "none"
        rows.append((str(p.conn), str(p.pid), f"{p.uid}:{p.gid}", str(p.parent or "-"),
                     str(p.pending), str(p.sessions), str(p.spawned), str(p.watched),
                     caps + (" (the name server)" if p.name_server else "")))  # fmt: skip
    _print_table(rows)
    if st.hidden:
        print(f"({st.hidden} processes not shown: other users', or past the list's bound)")
    for u in st.users:
        used = ", ".join(f"{what} {_amount(what, n)}/{_amount(what, u.limits[what])}"
                         for what, n in u.used.items())  # fmt: skip
        print(f"uid {u.uid}: {used}")
    if args.objects:
        _print_objects(st)
    return 0


def _print_objects(st: abi.KernelStatus) -> None:
    rows = [("OBJECT", "KIND", "HOLDERS", "CAPS", "STATE")]
    for o in st.objects:
        state = ", ".join(f"{k} {v}" for k, v in o.state.items())
        rows.append((str(o.oid), o.kind, ",".join(map(str, o.holders)), str(o.caps), state))
    print()
    _print_table(rows)
    if st.objects_hidden:
        print(f"({st.objects_hidden} more objects not listed)")


def _amount(what: str, n: int) -> str:
    if not what.endswith("bytes") or n < 1 << 10:
        return str(n)
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g}{unit}"
    return str(n)


def _user_limit(text: str) -> tuple[str, int]:
    from .daemon.quota import USER_LIMITS

    name, _, value = text.partition("=")
    what = name.replace("-", " ")
    if what not in USER_LIMITS or not value:
        raise argparse.ArgumentTypeError(
            f"{text}: expected NAME=N with NAME one of "
            + ", ".join(w.replace(" ", "-") for w in USER_LIMITS)
        )
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1].lower(), 1)
    try:
        n = int(value[:-1] if scale > 1 else value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: {value!r} is not a count") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text}: a limit cannot be negative")
    return what, n


def _octal_mode(text: str) -> int:
    mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text} is not a permission mode (000..777)")
    return mode


def _kernel(args: argparse.Namespace) -> int:
    from .client._launch import default_socket_path
    from .daemon.main import run

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s mkipc-kernel[%(process)d] %(levelname)s %(message)s",
    )
    path = os.path.abspath(args.socket or default_socket_path())
    try:
        run(
            path,
            idle_exit=args.idle_exit,
            spin_us=args.spin_us,
            names=not args.no_names,
            socket_mode=args.socket_mode,
            user_limits=dict(args.user_limit),
        )
    except RuntimeError as e:
        print(f"mkipc kernel: {e}", file=sys.stderr)
        return 1
    return 0
