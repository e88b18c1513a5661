# SPDX-License-Identifier: BSD-3-Clause
"""`scripts/demo`: one guest boot against our server, told as a short story.

Provisions what is missing (QEMU, guest kernel, busybox; cached outside the
checkout), starts `python -m vfu_platform serve` on a simulated device with a
trace file, boots a QEMU guest whose Linux drives the device through uio and
sysfs, and prints what the guest saw. Exit status 0 when every guest check passed.

`--arm`: the guest-driver demo instead: an Arm `virt` guest loads our bridge
module and the stock rtc-pl031 and gpio-pl061 drivers run `--device pl031,pl061`
(the RTC alarm and a GPIO edge raised in the same instant; the server's trace
shows the FIFO order). See testbench.armvirt.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from testbench import qemu
from testbench.armvirt import DriverResult

PROGRAMS = {"edu": "edu", "gpio": "irq_fifo"}


def _kv(detail: str | None) -> dict[str, str]:
    """key=value words of a check detail."""
    return dict(re.findall(r"(\S+?)=(\S+)", detail or ""))


def _mark(res: qemu.GuestResult, name: str) -> str:
    c = res.checks.get(name)
    return "not run" if c is None else ("ok" if c.passed else "FAILED")


def account_edu(res: qemu.GuestResult) -> list[str]:
    ids = _kv(res.detail("config-ids"))
    fact = res.detail("edu-factorial") or ""
    live = (res.detail("edu-liveness") or "").split(" ")[0]
    pint = _kv(res.infos.get("proc_interrupts"))
    dma = _kv(res.detail("dma-round-trip"))
    nomaster = _kv(res.infos.get("dma_no_master_to_ram"))
    reset = _kv(res.detail("reset-state"))
    return [
        f"  device       {ids.get('vendor', '?')}:{ids.get('device', '?')} rev {ids.get('revision', '?')} "
        f"class {ids.get('class', '?')} at {res.infos.get('bdf', '?')}, BAR0 {_kv(res.detail('bar0-size')).get('size', '?')} "
        f"bytes at {res.infos.get('bar0', '?')}",
        f"  registers    id {_kv(res.detail('edu-ident')).get('reg00', '?')}, liveness {live}, "
        f"{' '.join(w for w in fact.split() if w.startswith(('5!', '12!')))}  [{_mark(res, 'edu-factorial')}]",
        f"  interrupts   {pint.get('count', '?')} INTx interrupts counted by the guest (irq {pint.get('irq', '?')}, "
        f"/dev/{(res.infos.get('uio') or '?').split()[0]}): raise/ack {_mark(res, 'irq-raise')}, "
        f"second {_mark(res, 'irq-second')}, level re-arm {_mark(res, 'irq-level-rearm')}, "
        f"factorial IRQ {_mark(res, 'edu-factorial-irq')}",
        f"  DMA          4096 bytes RAM -> edu -> RAM equal={dma.get('equal', '?')} [{_mark(res, 'dma-round-trip')}], "
        f"partial [{_mark(res, 'dma-partial')}], completion IRQ 0x100 [{_mark(res, 'dma-irq')}], "
        f"bus master off: RAM untouched={nomaster.get('ram_untouched', '?')}",
        f"  reset        echo 1 > reset (method {res.infos.get('reset_method', '?')}, {res.infos.get('reset_took_s', '?')} s): "
        f"liveness {reset.get('reg04', '?')}, irq status {reset.get('reg24', '?')}, status {reset.get('reg20', '?')} "
        f"[{_mark(res, 'reset-state')}]",
    ]


def account_gpio(res: qemu.GuestResult) -> list[str]:
    order = _kv(res.detail("irq-fifo-order"))
    return [
        f"  device       {res.infos.get('device', '?')}, IRQ page {_kv(res.detail('irq-page')).get('bar', '?')}: "
        f"{res.detail('irq-page') or '?'}",
        f"  FIFO         raised {order.get('raised', '?')} at once, delivered {order.get('delivered', '?')} "
        f"(pending seen {res.infos.get('fifo_pending_seen', '?')}) [{_mark(res, 'irq-fifo-order')}]",
        f"  afterwards   {res.detail('irq-fifo-quiet') or '?'} [{_mark(res, 'irq-fifo-quiet')}]; "
        f"{res.infos.get('irq_counters', '?')}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=sorted(PROGRAMS), default="edu", help="simulated device (default edu)")
    ap.add_argument("--workdir", type=Path, help="where logs go (default: a new directory under /tmp)")
    ap.add_argument("--plain-ram", action="store_true",
                    help="guest RAM without memfd sharing: the server does DMA by DMA_READ/DMA_WRITE messages")
    ap.add_argument("--accel", default="auto", choices=("auto", "tcg", "kvm"))
    ap.add_argument("--console", action="store_true", help="echo the guest console while it runs")
    ap.add_argument("--arm", action="store_true",
                    help="Arm virt guest: stock rtc-pl031 + gpio-pl061 drivers on --device pl031,pl061 "
                         "through our bridge module")
    args = ap.parse_args(argv)
    if args.arm:
        return arm_demo(args)

    t0 = time.monotonic()
    print("vfu-platform demo: provisioning (instant when cached) ...", flush=True)
    try:
        bench = qemu.provision()
    except qemu.BenchError as e:
        print(f"provisioning failed:\n{e}", file=sys.stderr)
        return 1
    print(f"  {bench.qemu_version}; guest kernel {bench.kver}; cache {bench.dir} ({bench.provision_s:.1f} s)")
    print(f"  versions: {bench.versions()}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"vfu-demo-{args.device}-"))
    trace = workdir / qemu.SERVER_TRACE_NAME
    run = qemu.GuestRun(bench, PROGRAMS[args.device], workdir,
                        server=qemu.server_argv(args.device, trace=trace),
                        shared_memory=not args.plain_ram, qemu_trace=["vfio_user*"], accel=args.accel,
                        name=f"demo-{args.device}", echo=args.console)
    ram = "plain RAM (DMA by messages)" if args.plain_ram else "memfd RAM shared with the server"
    print(f"  booting a guest against `vfu_platform serve --device {args.device}` ({ram}) ...", flush=True)
    res = run.run()

    print()
    print(f"What the guest saw ({args.device} over vfio-user, QEMU {'TCG' if 'tcg' in res.qemu_command else 'KVM'}):")
    lines = account_edu(res) if args.device == "edu" else account_gpio(res)
    print("\n".join(lines))
    passed = sum(c.passed for c in res.checks.values())
    print(f"  checks       {passed}/{len(res.checks)} passed; {res.result_line or 'no RESULT line'}")
    t = res.timings
    print(f"  timing       QEMU start -> /init {t.get('qemu_to_init_s', float('nan')):.1f} s, /init -> result "
          f"{t.get('init_to_result_s', float('nan')):.1f} s, run {t.get('total_s', float('nan')):.1f} s, "
          f"all {time.monotonic() - t0:.1f} s (attempts {res.attempts})")
    if trace.exists():
        st = res.server_trace()
        top = ", ".join(f"{k} {v}" for k, v in sorted(st.commands.items(), key=lambda kv: -kv[1]))
        print(f"  server saw   {top}; IRQs signalled {st.events.get('irq-signal', 0)}; "
              f"error replies {len(st.errors)}")
    print("  logs")
    print(f"    console      {res.console_path}")
    if res.server_log_path:
        print(f"    server log   {res.server_log_path}")
    print(f"    server trace {trace}")
    if res.qemu_trace_path:
        print(f"    QEMU trace   {res.qemu_trace_path}")
    print(f"    QEMU command {workdir / 'qemu.cmd'}")
    if not res.passed:
        print()
        print(res.describe(tail=25))
    print(f"\nDEMO {'PASS' if res.passed else 'FAIL'}")
    return 0 if res.passed else 1


def account_arm(res: DriverResult) -> tuple[list[str], bool]:
    """What the stock drivers did in the group run, and whether the trace shows the FIFO order."""
    from testbench.driver_scenarios import GPIO_IN, RTC_EPOCH

    def kv(name: str) -> dict[str, str]:
        return _kv(res.detail(name))

    bound = kv("bridge-bound")
    rtc = res.detail("rtc-appeared") or ""
    rtc_name = re.search(r"name='([^']*)'", rtc)
    hw = re.search(r"hwclock='([^']*)'", res.detail("group-hwclock") or "")
    counts = res.infos.get("group_counts", "?")
    edge = res.detail("group-gpio-edge-seen") or "?"
    tl = res.timeline()
    pairs = [(a, b) for a, b in tl.fifo_pairs() if {a.line, b.line} == {0, 1}]
    names = {0: "pl031", 1: "pl061"}

    def at(t: float | None) -> str:
        return "never" if t is None else f"{t:.3f} s"

    if pairs:
        a, b = pairs[0]
        fifo = (f"line {a.line} ({names[a.line]}) ACTIVE, signalled at {at(a.signalled)}; line {b.line} "
                f"({names[b.line]}) fired at {at(b.fired)} and waited; EOI of line {a.line} at {at(a.eoi)}; "
                f"line {b.line} delivered at {at(b.signalled)}, EOI at {at(b.eoi)}  "
                f"[{'ok' if b.eoi is not None else 'FAILED'}]")
    else:
        fifo = "no delivery queued behind another in the trace  [FAILED]: " + \
            "; ".join(d.describe() for d in tl.deliveries()[-4:])
    if tl.hanging():
        fifo += "\n               signalled and never EOId (an interrupt the guest did not take): " + \
            "; ".join(d.describe() for d in tl.hanging())
    lines = [
        f"  bridge       vfu_bridge bound {bound.get('dev', '?')}, INTx irq {bound.get('irq', '?')}  "
        f"[{_mark(res, 'bridge-bound')}]",
        f"  rtc-pl031    {_kv(rtc).get('rtc', '?')} ({rtc_name.group(1) if rtc_name else '?'}): "
        f"hwclock '{hw.group(1).split('  ')[0] if hw else '?'}' (model set to {RTC_EPOCH})  [{_mark(res, 'group-hwclock')}]",
        f"  alarm        RTC moved onto the alarm: {res.detail('group-rtc-alarm-irq') or '?'}, "
        f"alarm consumed [{_mark(res, 'group-rtc-alarm-consumed')}]",
        f"  gpio-pl061   {kv('gpiochip-appeared').get('chip', '?')} ngpio {kv('gpiochip-appeared').get('ngpio', '?')}; "
        f"rising edge on line {GPIO_IN}: {edge}  [{_mark(res, 'group-gpio-edge-seen')}]",
        f"  IRQ counts   {counts}",
        f"  FIFO order   {fifo}",
    ]
    return lines, bool(pairs) and not tl.hanging()


def arm_demo(args: argparse.Namespace) -> int:
    """`scripts/demo --arm`: the pl031 + pl061 group in an Arm guest, stock drivers, one boot."""
    from testbench import armvirt, driver_scenarios

    t0 = time.monotonic()
    print("vfu-platform Arm guest-driver demo: provisioning (instant when cached) ...", flush=True)
    try:
        bench = armvirt.provision_driver_bench("arm64")
    except armvirt.BenchError as e:
        print(f"provisioning failed:\n{e}", file=sys.stderr)
        return 1
    print(f"  {bench.versions()}")
    scenario = driver_scenarios.group_fifo()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vfu-demo-arm-"))
    print(f"  booting an Arm virt guest (GICv3, TCG) against `vfu-platform serve --device {scenario.device} "
          f"--irq-mode {scenario.irq_mode}` ...", flush=True)
    res = armvirt.DriverRun(bench, scenario, workdir, echo=args.console).run()
    print()
    print("What the stock Linux drivers did (rtc-pl031, gpio-pl061 on the bridged devices):")
    lines, fifo_ok = account_arm(res)
    print("\n".join(lines))
    passed = sum(c.passed for c in res.checks.values())
    print(f"  checks       {passed}/{len(res.checks)} guest checks passed; {res.result_line or 'no RESULT line'}")
    t = res.timings
    print(f"  timing       QEMU start -> /init {t.get('qemu_to_init_s', float('nan')):.1f} s, /init -> result "
          f"{t.get('init_to_result_s', float('nan')):.1f} s, all {time.monotonic() - t0:.1f} s")
    print("  logs")
    print(f"    console      {res.console_path}")
    print(f"    server log   {res.server_log_path}")
    print(f"    server trace {workdir / qemu.SERVER_TRACE_NAME}")
    print(f"    guest /init  {workdir / 'init.sh'}")
    ok = res.passed and fifo_ok
    if not ok:
        print()
        print(res.describe(tail=25))
    print(f"\nDEMO {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
