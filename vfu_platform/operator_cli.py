# SPDX-License-Identifier: BSD-3-Clause
"""Operator subcommands: `status` (query a running server) and `qemu-args`.

The status channel: the vfio-user socket cannot carry a query (one client at a
time, and that client is QEMU), so `serve --socket S` always opens its control
socket (server/control.py) too, at `S.ctl` unless `--control PATH` names
another; it has the main socket's mode and group, and the main socket's lock
(S.lock) covers it: a `S.ctl` left by a killed server is replaced.  A path too
long for a unix socket costs only the status channel (one warning line).

On that socket the first word `server` addresses the server itself, every other
line goes to the device as before: `server status` answers one line of JSON
(vfu_platform/status.py), which `vfu-platform status --socket S` prints as a
table, or as indented JSON with `--json`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vfu_platform.backends.base import DeviceBackend

CONTROL_SUFFIX = ".ctl"
#: the first word of the lines the server answers itself on the control socket
SERVER_WORD = "server"


def status_path(socket_path: str) -> str:
    """The control/status socket of the server on `socket_path`."""
    return socket_path + CONTROL_SUFFIX


def add_commands(commands: Any) -> None:
    """Add `status` and `qemu-args` to the CLI's subparsers."""
    status = commands.add_parser("status", help="show what a running server is doing")
    status.add_argument("--socket", required=True, help="the server's vfio-user socket")
    status.add_argument("--control", metavar="PATH", help="its control socket, if served with --control (default SOCKET.ctl)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from vfu_platform.qemu_args import FORMATS, MACHINES

    qemu = commands.add_parser("qemu-args", help="print the QEMU arguments that attach a served device")
    qemu.add_argument("--socket", required=True, help="the server's vfio-user socket")
    qemu.add_argument("--machine", choices=list(MACHINES), default="q35", help="machine type (default q35)")
    qemu.add_argument("--memory", default="1G", help="guest RAM, shared with the server (default 1G)")
    qemu.add_argument("--id", default="vfu0", dest="device_id", help="QEMU device id (default vfu0)")
    qemu.add_argument("--format", choices=FORMATS, default="lines",
                      help="lines: one argument per line; shell: one quoted line; json: a JSON list")


def status(args: argparse.Namespace) -> int:
    """`vfu-platform status --socket S`: exit 0 and the state, or 1 and one line."""
    from vfu_platform.server.control import ControlError, request
    from vfu_platform.status import format_status

    path = args.control or status_path(args.socket)
    try:
        reply = request(path, [SERVER_WORD, "status"])
    except ControlError as exc:
        hint = "" if os.path.exists(args.socket) else f" (and no socket {args.socket}: is a server running?)"
        print(f"vfu-platform: error: {exc}{hint}", file=sys.stderr)
        return 1
    try:
        state = json.loads(reply)
    except ValueError:
        print(f"vfu-platform: error: {path} answered {reply[:200]!r}, not a status", file=sys.stderr)
        return 1
    print(json.dumps(state, indent=2, sort_keys=True) if args.json else format_status(state))
    return 0


def qemu_args(args: argparse.Namespace) -> int:
    from vfu_platform.qemu_args import QemuArgsError, format_args, qemu_args as build

    try:
        words = build(args.socket, machine=args.machine, memory=args.memory, device_id=args.device_id)
    except QemuArgsError as exc:
        print(f"vfu-platform: error: {exc}", file=sys.stderr)
        return 2
    if not os.path.exists(args.socket):
        print(f"vfu-platform: warning: no socket {args.socket} yet (start the server before QEMU)", file=sys.stderr)
    print(format_args(words, args.format))
    return 0


def open_control(server: Any, backend: DeviceBackend, path: str | None, name: str, kind: str) -> Any:
    """Listen on the control socket (`path`, else SOCKET.ctl) in the server's loop; None if it cannot.

    Call after `server.listen()`: the socket takes the main socket's mode and group.
    An explicit `path` that cannot be used is an error (SocketPathError); the derived
    one only costs a warning.
    """
    from vfu_platform.backends.base import route_control
    from vfu_platform.server.control import ControlServer
    from vfu_platform.endpoint import SocketPathError
    from vfu_platform.status import collect_status

    def handler(words: list[str]) -> str:
        if words[0] == SERVER_WORD:
            if words[1:] == ["status"]:
                return json.dumps(collect_status(server, name, kind), separators=(",", ":"))
            return f"error: unknown server command {' '.join(words[1:])!r} (known: server status)"
        return route_control([backend], words)

    derived = path is None
    target = status_path(server.path) if derived else path
    st = os.stat(server.path)
    control = ControlServer(target, server.loop, handler)
    try:
        control.listen(mode=st.st_mode & 0o777, gid=st.st_gid, replace_stale=derived)
    except (SocketPathError, OSError) as exc:
        if not derived:
            raise SocketPathError(str(exc)) from None
        print(f"vfu-platform: warning: no status socket: {exc}", file=sys.stderr, flush=True)
        return None
    return control
