"""`mkipc`: run the kernel daemon, the demo, or the benchmark."""

from __future__ import annotations

import argparse
import logging
import os
import sys


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
        "--no-names", action="store_true", help="do not start the name server (services/names)"
    )
    k.add_argument("--log-level", default="INFO")

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
    from . import demo

    return demo.main()


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
        )
    except RuntimeError as e:
        print(f"mkipc kernel: {e}", file=sys.stderr)
        return 1
    return 0
