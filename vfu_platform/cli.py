# SPDX-License-Identifier: BSD-3-Clause
"""The `vfu-platform` command line.

Every bad argument gets one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from vfu_platform.backends.base import DeviceBackend
from vfu_platform.bridge.bar_plan import BarPlanError
from vfu_platform.bridge.config_space import PciIds
from vfu_platform.bridge.device import BridgeOptions, PciBridge, RegionOptions
from vfu_platform.config import Config, ConfigError, load_config

EXIT_USAGE = 2

#: PCI identities of the built-in models (edu's are QEMU's own edu device).
MODEL_IDS = {
    "edu": PciIds(vendor=0x1234, device=0x11E8, class_code=0x00FF00),
    "gpio": PciIds(vendor=0x1234, device=0x5650, class_code=0x088000),
    "pl011": PciIds(vendor=0x1234, device=0x5646, class_code=0x088000),  # bridge with a guest descriptor
    "dw-apb-uart": PciIds(vendor=0x1234, device=0x5646, class_code=0x088000),
    # the vfu-platform bridge with a guest descriptor (docs/guest-descriptor.md)
    "pl031": PciIds(vendor=0x1234, device=0x5646, class_code=0x088000),
    "pl061": PciIds(vendor=0x1234, device=0x5646, class_code=0x088000),
}


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vfu-platform", description="vfio-user server for platform devices")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve a device on a vfio-user socket")
    serve.add_argument("--socket", required=True, help="unix socket path to listen on")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--device", help="simulated device model: edu (default), gpio, or package.module:Class; "
                        "several, comma-separated (pl031,pl061), make a device group behind one bridge")
    source.add_argument("--host", help="host device bound to vfio-platform/vfio-amba/vfio-pci (sysfs name)")
    source.add_argument("--sysfsdev", help="host device by sysfs path")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                       help="device model option (repeatable); in a group LABEL.KEY=VALUE (pl061.ngpios=8)")
    serve.add_argument("--irq-mode", choices=["intx", "msix"], help="how platform IRQs reach the client")
    serve.add_argument("--trace", metavar="FILE", help="write one JSON line per message and IRQ transition")
    serve.add_argument("--unsafe-noiommu-dma", action="store_true",
                       help="host devices in no-IOMMU mode: allow DMA maps (the device can reach any memory)")
    serve.add_argument("-v", "--verbose", action="count", default=0, help="log a readable summary (-vv: every message)")
    serve.add_argument("--message-timeout", type=_seconds, metavar="SECONDS",
                       help="drop a client that stalls this long: no VERSION, a message left incomplete, "
                            "a reply not taken (default 5, like QEMU's x-msg-timeout)")
    serve.add_argument("--control", metavar="PATH", help="also listen on a control socket (see `vfu-platform control`)")

    inspect = commands.add_parser("inspect", help="describe a host VFIO device and its bridge plan")
    inspect.add_argument("name", help="sysfs device name or path")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands.add_parser("models", help="list the built-in simulated device models")

    control = commands.add_parser("control", help="send one command to a running server's control socket")
    control.add_argument("--control", required=True, metavar="PATH", help="the server's --control socket")
    control.add_argument("words", nargs=argparse.REMAINDER, help="the command, e.g. gpio set 3 1")
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
    if host or sysfsdev:
        from vfu_platform.backends.vfio import open_host_device  # imported only for host devices

        return open_host_device(host=host, sysfsdev=sysfsdev, allow_unsafe_noiommu_dma=args.unsafe_noiommu_dma), "host"
    from vfu_platform.backends.sim.registry import create_model

    if config.device.model and config.device.models:
        raise UsageError("config [device]: give model or models, not both")
    model = args.device or config.device.model or ",".join(config.device.models or ()) or "edu"
    options = _model_options(args.option, config.device.options)
    try:
        if "," in model:  # a device group: several platform devices behind one bridge
            from vfu_platform.backends.group import create_group

            models = [name.strip() for name in model.split(",")]
            if not all(models):
                raise ValueError(f"--device {model!r}: an empty model name in the list")
            return create_group(models, options, create_model), ",".join(models)
        return create_model(model, options), model
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def bridge_options(args: argparse.Namespace, config: Config, model: str) -> BridgeOptions:
    section = config.bridge
    base = MODEL_IDS.get(model) or (GROUP_IDS if "," in model else PciIds())
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
    from vfu_platform.server.listener import Server, SocketPathError, check_socket_path
    from vfu_platform.server.session import SessionOptions
    from vfu_platform.trace import Tracer

    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="vfu-platform: %(message)s",
        stream=sys.stderr,
    )
    config = load_config(args.config) if args.config else Config()
    try:
        check_socket_path(args.socket)
        if args.control:
            check_socket_path(args.control)
    except SocketPathError as exc:
        raise UsageError(str(exc)) from None
    if args.control and os.path.abspath(args.control) == os.path.abspath(args.socket):
        raise UsageError("--control must be another path than --socket")
    backend, model = make_backend(args, config)
    from vfu_platform.bridge.pci_passthrough import PciPassthrough, serves_as_pci_function

    try:
        if serves_as_pci_function(backend):  # a vfio-pci function is served as itself, no bridge
            bridge: PciBridge | PciPassthrough = PciPassthrough(backend)  # type: ignore[arg-type]
        else:
            bridge = PciBridge(backend, bridge_options(args, config, model))
    except (BarPlanError, ValueError) as exc:
        backend.close()
        raise UsageError(str(exc)) from None
    try:
        tracer = Tracer.open(args.trace) if args.trace else None
    except OSError as exc:
        bridge.close()
        raise UsageError(f"cannot open trace file {args.trace}: {exc.strerror}") from None
    options = SessionOptions(max_data_xfer_size=config.server.max_data_xfer_size,
                             write_multiple=config.server.write_multiple,
                             message_timeout=args.message_timeout or config.server.message_timeout)
    server = Server(args.socket, bridge, options, tracer)
    server.install_signal_handlers()  # before the socket exists: an early SIGTERM is a clean stop
    try:
        server.listen()
    except SocketPathError as exc:
        server.close()
        bridge.close()
        raise UsageError(str(exc)) from None
    control = _listen_control(args.control, server, backend) if args.control else None
    print(f"vfu-platform: serving {model} on {args.socket}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        if control:
            control.close()
        server.close()
        bridge.close()
        if tracer:
            tracer.close()
    return 0


def _listen_control(path: str, server: object, backend: DeviceBackend) -> object:
    """The control socket in the server's loop; commands go to the backend (by first word)."""
    from vfu_platform.backends.base import route_control
    from vfu_platform.server.control import ControlServer
    from vfu_platform.server.listener import SocketPathError

    control = ControlServer(path, server.loop, lambda words: route_control([backend], words))  # type: ignore[attr-defined]
    try:
        control.listen()
    except SocketPathError as exc:
        server.close()  # type: ignore[attr-defined]
        backend.close()
        raise UsageError(str(exc)) from None
    return control


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

    return print_inspect(args.name, as_json=args.json)


def _print_report(report: object) -> None:
    """The `inspect` table of a report (vfu_platform.inspect_report.format_table)."""
    from vfu_platform.inspect_report import format_table

    print(format_table(report))  # type: ignore[arg-type]


def list_models(_args: argparse.Namespace) -> int:
    from vfu_platform.backends.sim.registry import known_models

    for name in known_models():
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": serve, "inspect": inspect, "models": list_models}
    handlers["control"] = control
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
