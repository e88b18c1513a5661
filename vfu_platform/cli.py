# SPDX-License-Identifier: BSD-3-Clause
"""The `vfu-platform` command line.

Every bad argument gets one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from vfu_platform.backends.base import DeviceBackend
from vfu_platform.bridge.bar_plan import BarPlanError
from vfu_platform.bridge.config_space import PciIds
from vfu_platform.bridge.device import BridgeOptions, PciBridge, RegionOptions
from vfu_platform.config import BridgeSection, Config, ConfigError, DeviceSection, load_config

EXIT_USAGE = 2

#: PCI identity of a device group (`--device pl031,pl061`): the descriptor bridge's.
GROUP_IDS = PciIds(vendor=0x1234, device=0x5646, class_code=0x088000)


class UsageError(Exception):
    """A bad argument or configuration; printed as one line."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 seconds")
    return value


def _socket_mode(text: str) -> int:
    from vfu_platform.endpoint import parse_mode

    try:
        return parse_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def package_version() -> str:
    """The installed distribution's version, else the package's own `__version__`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vfu-platform")
    except PackageNotFoundError:
        from vfu_platform import __version__

        return __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vfu-platform", description="vfio-user server for platform devices")
    parser.add_argument("--version", action="version", version=f"vfu-platform {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve a device on a vfio-user socket")
    serve.add_argument("--socket", help="unix socket path to listen on (with systemd socket activation: the "
                       "path of the passed socket); not with a --config that lists several [[devices]]")
    serve.add_argument("--socket-mode", type=_socket_mode, metavar="OCTAL",
                       help="permissions of the socket file (default 0600), e.g. 0660 with --socket-group")
    serve.add_argument("--socket-group", metavar="NAME|GID",
                       help="group of the socket file (one this user is in), e.g. kvm for libvirt's QEMU")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--device", help="simulated device model: edu (default), gpio, package.module:Class or "
                        "path/to/file.py:Class; several, comma-separated (pl031,pl061), make a device group "
                        "behind one bridge")
    source.add_argument("--host", help="host device bound to vfio-platform/vfio-amba/vfio-pci (sysfs name)")
    source.add_argument("--sysfsdev", help="host device by sysfs path")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                       help="device model option (repeatable); in a group LABEL.KEY=VALUE (pl061.ngpios=8)")
    serve.add_argument("--irq-mode", choices=["intx", "msix"], help="how platform IRQs reach the client")
    serve.add_argument("--trace", metavar="FILE", help="write one JSON line per message and IRQ transition")
    serve.add_argument("--unsafe-noiommu-dma", action="store_true",
                       help="host devices in no-IOMMU mode: allow DMA maps (the device can reach any memory)")
    serve.add_argument("-v", "--verbose", action="count", default=0,
                       help="log connections and IRQ state changes (-vv: also one line per message)")
    serve.add_argument("--log-file", metavar="FILE", help="log to FILE (appended; reopened on SIGHUP), not stderr")
    serve.add_argument("--message-timeout", type=_seconds, metavar="SECONDS",
                       help="drop a client that stalls this long: no VERSION, a message left incomplete, "
                            "a reply not taken (default 5, like QEMU's x-msg-timeout)")
    serve.add_argument("--control", metavar="PATH", help="the control socket (default SOCKET.ctl; see `vfu-platform control` and `status`)")

    inspect = commands.add_parser("inspect", help="describe a host VFIO device (or a model) and its bridge plan")
    inspect.add_argument("name", nargs="?", help="sysfs device name or path")
    inspect.add_argument("--device", metavar="MODEL", help="a simulated model instead (as `serve --device`)")
    inspect.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                         help="model option, with --device (repeatable)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    models = commands.add_parser("models", help="list the built-in simulated device models")
    models.add_argument("--json", action="store_true",
                        help="describe each model: class, PCI ids, regions, IRQs, options")

    trace = commands.add_parser("trace", help="read a --trace file")
    trace_commands = trace.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
    summary = trace_commands.add_parser("summary", help="per-command counts and errors, IRQ latencies, clients")
    summary.add_argument("file", help="the trace file (several runs and a cut-off last line are fine)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")

    control = commands.add_parser("control", help="send one command to a running server's control socket")
    control.add_argument("--control", required=True, metavar="PATH", help="the server's --control socket")
    control.add_argument("words", nargs=argparse.REMAINDER, help="the command, e.g. gpio set 3 1")
    from vfu_platform.operator_cli import add_commands

    add_commands(commands)  # status, qemu-args
    return parser


def _model_options(pairs: Sequence[str], base: dict[str, object]) -> dict[str, object]:
    options = dict(base)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def make_backend(args: argparse.Namespace, config: Config) -> tuple[DeviceBackend, str]:
    host = args.host or config.device.host
    sysfsdev = args.sysfsdev or config.device.sysfsdev
    _refuse_host_and_model(args, config)
    if host or sysfsdev:
        from vfu_platform.backends.vfio import open_host_device  # imported only for host devices

        return open_host_device(host=host, sysfsdev=sysfsdev, allow_unsafe_noiommu_dma=args.unsafe_noiommu_dma), "host"
    from vfu_platform.backends.sim.registry import create_model

    if config.device.model and config.device.models:
        raise UsageError("config [device]: give model or models, not both")
    model = args.device or config.device.model or ",".join(config.device.models or ()) or "edu"
    options = _model_options(args.option, config.device.options)
    try:
        importable = _expand_model_files(model)  # PATH.py:Class -> module:Class, shown as given
        if "," in model:  # a device group: several platform devices behind one bridge
            from vfu_platform.backends.group import create_group

            models = [name.strip() for name in importable.split(",")]
            if not all(models):
                raise ValueError(f"--device {model!r}: an empty model name in the list")
            return create_group(models, options, create_model), ",".join(name.strip() for name in model.split(","))
        return create_model(importable, options), model
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _refuse_host_and_model(args: argparse.Namespace, config: Config) -> None:
    """A host device and a model named together (flags or config) are an error, never a silent pick."""
    hosts = [f"--host {args.host}" if args.host else "", f"--sysfsdev {args.sysfsdev}" if args.sysfsdev else "",
             f"the config's [device] host = {config.device.host!r}" if config.device.host else "",
             f"the config's [device] sysfsdev = {config.device.sysfsdev!r}" if config.device.sysfsdev else ""]
    models = [f"--device {args.device}" if args.device else "",
              f"the config's [device] model = {config.device.model!r}" if config.device.model else "",
              f"the config's [device] models = {list(config.device.models)!r}" if config.device.models else ""]
    host, model = next((h for h in hosts if h), ""), next((m for m in models if m), "")
    if host and model:
        raise UsageError(f"{model} and {host}: serve a model or a host device, not both")


def check_bridge_config(backend: DeviceBackend, config: Config) -> None:
    """The [bridge] region options and ack registers name regions the device has, inside them."""
    sizes = {region.index: region.size for region in backend.regions()}
    have = ", ".join(str(index) for index in sorted(sizes)) or "none"
    for option in config.bridge.region:
        if option.index not in sizes:
            raise UsageError(f"config [[bridge.region]] index = {option.index}: the device has no region "
                             f"{option.index} (its regions: {have})")
    for ack in config.bridge.ack:
        if ack.region not in sizes:
            raise UsageError(f"config [[bridge.ack]] region = {ack.region}: the device has no region {ack.region} "
                             f"(its regions: {have})")
        if ack.offset + 4 > sizes[ack.region]:
            raise UsageError(f"config [[bridge.ack]] offset = {ack.offset:#x}: a 4-byte register there ends past "
                             f"region {ack.region} ({sizes[ack.region]:#x} bytes)")


def _expand_model_files(model: str) -> str:
    """Each "PATH.py:Class" of a (comma-separated) model spec, imported, as its "module:Class" name."""
    from vfu_platform.backends.sim.model_file import is_file_spec, load_model_file

    return ",".join(load_model_file(part.strip()) if is_file_spec(part.strip()) else part for part in model.split(","))


def model_ids(model: str, backend: DeviceBackend | None = None) -> PciIds:
    """The PCI identity of `model` before any [bridge] override: its class's (`pci_vendor`,
    `pci_device`, `pci_class`), GROUP_IDS for a group, QEMU's defaults for a host device."""
    if model == "host":
        return PciIds()
    if "," in model:
        return GROUP_IDS
    from vfu_platform.backends.sim.identity import DEFAULT_IDENTITY, model_identity

    if backend is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            identity = model_identity(type(backend))
        for warning in caught:  # one line, like every other message of the command
            print(f"vfu-platform: warning: {warning.message}", file=sys.stderr)
    else:
        from vfu_platform.backends.sim.registry import resolve_model

        try:
            identity = model_identity(resolve_model(model))
        except ValueError:
            identity = DEFAULT_IDENTITY
    return PciIds(vendor=identity.vendor, device=identity.device, class_code=identity.class_code)


def bridge_options(args: argparse.Namespace, config: Config, model: str,
                   backend: DeviceBackend | None = None) -> BridgeOptions:
    section = config.bridge
    base = model_ids(model, backend)
    ids = PciIds(
        vendor=base.vendor if section.vendor_id is None else section.vendor_id,
        device=base.device if section.device_id is None else section.device_id,
        subsystem_vendor=base.subsystem_vendor if section.subsystem_vendor_id is None else section.subsystem_vendor_id,
        subsystem_id=base.subsystem_id if section.subsystem_id is None else section.subsystem_id,
        class_code=base.class_code if section.class_code is None else section.class_code,
        revision=base.revision if section.revision is None else section.revision,
    )
    from vfu_platform.backends.base import AckRegister

    return BridgeOptions(
        ids=ids,
        irq_mode=args.irq_mode or section.irq_mode or "intx",
        page_size=section.page_size,
        regions={r.index: RegionOptions(r.mmap, r.bits64, r.prefetchable) for r in section.region},
        ack_registers=tuple(AckRegister(a.irq, a.region, a.offset, a.mask) for a in section.ack),
        use_model_acks=section.use_model_acks,
    )


def serve(args: argparse.Namespace) -> int:
    """Serve one device (--socket), or every device a config's [[devices]] lists, in one process."""
    from vfu_platform import logs
    from vfu_platform.config import expand_devices
    from vfu_platform.endpoint import SocketPathError, check_socket_path, parse_mode, resolve_group, take_inherited
    from vfu_platform.server.loop import EventLoop
    from vfu_platform.server.notify import Notifier

    try:
        logs.configure_logging(args.verbose, args.log_file)
    except OSError as exc:
        raise UsageError(f"cannot open log file {args.log_file}: {exc.strerror}") from None
    config = load_config(args.config) if args.config else Config()
    units = _devices_to_serve(args, config, expand_devices(config))
    notifier = Notifier.from_environ()
    try:
        passed = take_inherited()  # systemd socket activation (LISTEN_FDS)
        if passed is not None and len(units) > 1:
            raise UsageError("socket activation passes one socket: serve one device per service "
                             "(vfu-platform@.socket), not a config with several [[devices]]")
        mode = args.socket_mode if args.socket_mode is not None else parse_mode(config.server.socket_mode)
        group = args.socket_group if args.socket_group is not None else config.server.socket_group
        gid = None if group is None else resolve_group(group)
        for socket_path, _alone, _trace, control_path in units:
            if passed is None:  # a passed socket is live and ours: no probe
                check_socket_path(socket_path)
            if control_path:
                if os.path.abspath(control_path) == os.path.abspath(socket_path):
                    raise UsageError("--control must be another path than --socket")
                check_socket_path(control_path)
    except (SocketPathError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    loop = EventLoop()
    served: list[_Served] = []
    try:
        for socket_path, alone, trace, control_path in units:
            label = socket_path if len(units) > 1 else ""  # names the device in its log and errors
            try:
                served.append(_open_device(args, alone, socket_path, trace, control_path, loop,
                                           passed, mode, gid, first=not served, label=label))
            except UsageError as exc:
                raise UsageError(f"{label}: {exc}" if label else str(exc)) from None
        first = served[0].server
        first.on_reopen += [logs.reopen, *(unit.tracer.reopen for unit in served if unit.tracer)]  # SIGHUP
        for unit in served:
            print(f"vfu-platform: serving {unit.model} on {unit.socket}", file=sys.stderr, flush=True)

        def status() -> str:
            if len(served) == 1:
                unit = served[0]
                return f"serving {unit.model} on {unit.socket}, {unit.server.sessions_served} clients served"
            clients = sum(unit.server.session is not None and not unit.server.session.closed for unit in served)
            return f"serving {len(served)} devices, {clients} clients attached"

        for unit in served:
            unit.server.on_session_end.append(lambda _session: notifier.status(status()))
        notifier.ready(status())
        try:
            first.serve_forever()
        finally:
            notifier.stopping(f"stopping: {status()}")
    finally:
        for unit in reversed(served):
            unit.close()
        loop.close()
    return 0


def _devices_to_serve(args: argparse.Namespace, config: Config,
                      listed: list[tuple[str, Config, str | None, str | None]]
                      ) -> list[tuple[str, Config, str | None, str | None]]:
    """(socket, config, trace, control) per device: --socket's one, or the config's [[devices]]."""
    if not listed:
        if not args.socket:
            raise UsageError("serve: --socket is required (or a --config that lists [[devices]])")
        return [(args.socket, config, args.trace, args.control)]
    if args.socket:
        raise UsageError(f"--socket and a config listing {len(listed)} [[devices]]: give one or the other")
    per_device = [flag for flag, value in (("--device", args.device), ("--host", args.host),
                                           ("--sysfsdev", args.sysfsdev), ("--option", args.option),
                                           ("--irq-mode", args.irq_mode), ("--trace", args.trace),
                                           ("--control", args.control)) if value]
    if per_device:
        raise UsageError(f"{', '.join(per_device)} with [[devices]] in the config: set it in each [[devices]] entry")
    if config.device != DeviceSection() or config.bridge != BridgeSection():
        raise UsageError("config: [device]/[bridge] and [[devices]] together: put them in each [[devices]] entry")
    return listed


class _Served:
    """One device of the process: its backend, bridge, server (listener), control socket and trace."""

    def __init__(self, model: str, socket_path: str, backend: DeviceBackend, bridge: object) -> None:
        self.model = model
        self.socket = socket_path
        self.backend = backend
        self.bridge = bridge
        self.server: Any = None
        self.control: Any = None
        self.tracer: Any = None

    def close(self) -> None:
        if self.control:
            self.control.close()
        if self.server:
            self.server.close()
        self.bridge.close()  # type: ignore[attr-defined]
        if self.tracer:
            self.tracer.close()


def _open_device(args: argparse.Namespace, config: Config, socket_path: str, trace: str | None,
                 control_path: str | None, loop: Any, passed: Any, mode: int, gid: int | None,
                 first: bool, label: str = "") -> _Served:
    """Open one device and listen for its client in `loop` (the first one also takes the signals)."""
    from vfu_platform import logs
    from vfu_platform.bridge.pci_passthrough import PciPassthrough, serves_as_pci_function
    from vfu_platform.endpoint import SocketPathError
    from vfu_platform.server.listener import Server
    from vfu_platform.server.session import SessionOptions
    from vfu_platform.trace import RunInfo, Tracer, observers

    backend, model = make_backend(args, config)
    try:
        check_bridge_config(backend, config)
        if serves_as_pci_function(backend):  # a vfio-pci function is served as itself, no bridge
            bridge: PciBridge | PciPassthrough = PciPassthrough(backend)  # type: ignore[arg-type]
        else:
            bridge = PciBridge(backend, bridge_options(args, config, model, backend))
    except (BarPlanError, ValueError) as exc:
        backend.close()
        raise UsageError(str(exc)) from None
    except UsageError:
        backend.close()
        raise
    unit = _Served(model, socket_path, backend, bridge)
    try:
        options = SessionOptions(max_data_xfer_size=config.server.max_data_xfer_size,
                                 write_multiple=config.server.write_multiple,
                                 message_timeout=args.message_timeout or config.server.message_timeout)
        is_bridge = isinstance(bridge, PciBridge)
        run = RunInfo(model, {"irq_mode": bridge.options.irq_mode if is_bridge else "passthrough",  # type: ignore[union-attr]
                              "device_options": _model_options(args.option, config.device.options),
                              "config": args.config, "socket": socket_path,
                              "message_timeout": options.message_timeout,
                              "max_data_xfer_size": options.max_data_xfer_size, "verbose": args.verbose})
        try:
            unit.tracer = Tracer.open(trace, run) if trace else None
        except OSError as exc:
            raise UsageError(f"cannot open trace file {trace}: {exc.strerror}") from None
        # -vv only: below that the message log is not in the hook at all (the fast path stays on)
        bar_names = {b.index: b.name or ("irq-page" if b.region is None else "")
                     for b in bridge.plan.bars} if is_bridge else {}  # type: ignore[union-attr]
        message_log = logs.MessageLog(logs.pci_region_namer(bar_names)) if args.verbose >= 2 else None
        unit.server = Server(socket_path, bridge, options, observers(unit.tracer, message_log), loop, label)
        if first:
            unit.server.install_signal_handlers()  # before the socket exists: an early SIGTERM is a clean stop
        try:
            unit.server.listen(mode, gid, passed)
        except SocketPathError as exc:
            raise UsageError(str(exc)) from None
        unit.control = _listen_control(args, config, unit.server, backend, model, control_path)
    except BaseException:
        unit.close()
        raise
    return unit


def _listen_control(args: argparse.Namespace, config: Config, server: object, backend: DeviceBackend,
                    model: str, path: str | None) -> object:
    """The control socket (`path`, else SOCKET.ctl) in the server's loop: device commands and `server status`."""
    from vfu_platform.endpoint import SocketPathError
    from vfu_platform.operator_cli import open_control

    host = args.host or args.sysfsdev or config.device.host or config.device.sysfsdev
    name, kind = (host, "host") if model == "host" and host else (model, "model")
    try:
        return open_control(server, backend, path, name, kind)
    except SocketPathError as exc:
        raise UsageError(str(exc)) from None


def control(args: argparse.Namespace) -> int:
    """`vfu-platform control --control PATH WORDS...`: print the reply; exit 1 on error."""
    from vfu_platform.server.control import ControlError, request

    if not args.words:
        raise UsageError("control: no command given (e.g. `gpio get`)")
    try:
        reply = request(args.control, args.words)
    except ControlError as exc:
        print(f"vfu-platform: error: {exc}", file=sys.stderr)
        return 1
    print(reply)
    return 1 if reply.startswith("error:") else 0


def inspect(args: argparse.Namespace) -> int:
    """Describe a host device and the server's plan for it; exit 1 when it cannot be opened."""
    from vfu_platform.inspect_report import print_inspect

    if args.device is not None:
        if args.name is not None:
            raise UsageError("inspect: give a host device NAME or --device MODEL, not both")
        return inspect_model(args)
    if args.option:
        raise UsageError("inspect: --option needs --device")
    if args.name is None:
        raise UsageError("inspect: give a host device NAME or --device MODEL")
    return print_inspect(args.name, as_json=args.json)


def _describe(spec: str, backend: DeviceBackend, plan: bool) -> object:
    """The model_report.ModelReport of a built model (or group) named `spec`."""
    from vfu_platform.backends.sim.identity import declares_identity
    from vfu_platform.model_report import ModelPci, describe_backend

    ids = model_ids(spec, backend)
    declared = "," in spec or declares_identity(type(backend))
    pci = ModelPci(vendor=ids.vendor, device=ids.device, class_code=ids.class_code, declared=declared)
    # a group's options are its members' (LABEL.KEY=VALUE), not DeviceGroup's own arguments
    return describe_backend(spec, type(backend), backend, pci, plan=plan, options=[] if "," in spec else None)


@contextlib.contextmanager
def _quiet_ports() -> Iterator[None]:
    """Hold back INFO/WARNING log lines while a model is built only to be described."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def inspect_model(args: argparse.Namespace) -> int:
    """`inspect --device MODEL`: the model's regions, IRQs, identity and the bridge's BAR plan."""
    import msgspec

    from vfu_platform.model_report import format_model

    model_args = argparse.Namespace(host=None, sysfsdev=None, device=args.device, option=args.option,
                                    unsafe_noiommu_dma=False)
    with _quiet_ports():  # a UART model opens a pty nobody will use: no "serial port on" line
        backend, spec = make_backend(model_args, Config())
    try:
        report = _describe(spec, backend, plan=True)
    finally:
        backend.close()
    print(msgspec.json.encode(report).decode() if args.json else format_model(report))  # type: ignore[arg-type]
    return 0


def _print_report(report: object) -> None:
    """The `inspect` table of a report (vfu_platform.inspect_report.format_table)."""
    from vfu_platform.inspect_report import format_table

    print(format_table(report))  # type: ignore[arg-type]


def list_models(args: argparse.Namespace) -> int:
    """`models`: one built-in model name a line; with --json, a description of each."""
    from vfu_platform.backends.sim.registry import create_model, known_models

    if not args.json:
        for name in known_models():
            print(name)
        return 0
    import msgspec

    reports = []
    for name in known_models():
        with _quiet_ports():
            backend = create_model(name)
        try:
            reports.append(_describe(name, backend, plan=False))
        finally:
            backend.close()
    print(msgspec.json.encode(reports).decode())
    return 0


def trace_command(args: argparse.Namespace) -> int:
    """`vfu-platform trace summary FILE [--json]`."""
    from vfu_platform.trace_summary import TraceFileError, main as summary

    try:
        return summary(args.file, as_json=args.json)
    except TraceFileError as exc:
        raise UsageError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": serve, "inspect": inspect, "models": list_models}
    handlers["control"] = control
    handlers["trace"] = trace_command
    from vfu_platform import operator_cli

    handlers["status"] = operator_cli.status
    handlers["qemu-args"] = operator_cli.qemu_args
    try:
        return handlers[args.command](args)
    except (UsageError, ConfigError) as exc:
        print(f"vfu-platform: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a host-device error raised with a one-line message
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(exc, "one_line", False):
            print(f"vfu-platform: error: {message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
