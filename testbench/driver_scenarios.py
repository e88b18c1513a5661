# SPDX-License-Identifier: BSD-3-Clause
"""The guest-driver scenarios: stock Linux drivers on devices behind our bridge.

Each function returns an `armvirt.Scenario`: a busybox sh body for the guest's
/init and the host actions it asks for. The guest only uses stock interfaces:
`insmod` of our bridge module, then the rtc class (`hwclock`, `wakealarm`), the
sysfs GPIO interface (export, `direction`, `value`, `edge` + poll through the
`gpio-wait` helper) and a tty (`/dev/ttyS<n>`); the drivers are the kernel's own
rtc-pl031, gpio-pl061 and 8250_dw.

Why the gpio-wait helper: the sysfs GPIO ABI reports an edge as POLLPRI on the
`value` file, and busybox has no poll(); /proc/interrupts counts are checked
too, but they only show that the IRQ ran, not that userspace got the event.

Host side: the model's control socket (`vfu-platform serve --control`), words as
pl031.py / pl061.py define them (`pl031 set SECONDS`, `pl061 set LINE 0|1`,
`pl061 get LINE` -> "ok LEVEL in|out"); with one device the name prefix is
optional, and it is always sent here so that the same action works in a group.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time
from pathlib import Path

from testbench.armvirt import HostActionError, HostContext, Scenario

#: the time the tests put in the model's RTC (2023-11-14 22:13:20 UTC)
RTC_EPOCH = 1_700_000_000
#: the GPIO lines the gpio scenarios use: one output, one input
GPIO_OUT = 0
GPIO_IN = 3

# ---- guest shell library ---------------------------------------------------------------

SHLIB = r"""
# actions NAME: IRQ numbers whose action list names NAME
irqs_named() {
    for a in /sys/kernel/irq/*/actions; do
        grep -qw -- "$1" "$a" 2>/dev/null && { a=${a%/actions}; echo "${a##*/}"; }
    done
}
# new_word "OLD LIST" "NEW LIST": the first word of NEW that is not in OLD
new_word() {
    for w in $2; do case " $1 " in *" $w "*) ;; *) echo "$w"; return 0 ;; esac; done
    return 1
}
proc_irq_line() { grep -E "^ *$1:" /proc/interrupts | tr -s ' '; }
bridge_load() {
    RTCS0=$(ls /sys/class/rtc 2>/dev/null | tr '\n' ' ')
    CHIPS0=$(ls -d /sys/class/gpio/gpiochip* 2>/dev/null | tr '\n' ' ')
    TTYS0=$(ls /sys/class/tty | grep '^ttyS' | tr '\n' ' ')
    RTC_IRQS0=$(irqs_named rtc-pl031 | tr '\n' ' ')
    _t0=$(cut -d' ' -f1 /proc/uptime)
    _out=$(insmod /lib/modules/vfu_bridge.ko 2>&1); _rc=$?
    check bridge-insmod "rc=$_rc took=$(awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$_t0" 'BEGIN{printf "%.2fs", a-b}') $_out" [ $_rc -eq 0 ]
    BRIDGE_DEV=
    for _d in /sys/bus/pci/drivers/*/0000:*; do
        [ -e "$_d" ] || continue
        _m=$(readlink -f "${_d%/*}/module" 2>/dev/null)
        [ "${_m##*/}" = vfu_bridge ] && BRIDGE_DEV=$(readlink -f "$_d")
    done
    BRIDGE_IRQ=$(cat "$BRIDGE_DEV/irq" 2>/dev/null)
    need bridge-bound "dev=${BRIDGE_DEV##*/} driver=$(basename "$(readlink -f "$BRIDGE_DEV/driver")") irq=$BRIDGE_IRQ msi_irqs=$(ls "$BRIDGE_DEV/msi_irqs" 2>/dev/null | tr '\n' ',')" [ -n "$BRIDGE_DEV" ]
    info bridge_dmesg "$(dmesg_new | grep -i vfu | tail -n 4 | tr '\n' '|')"
}
# find_rtc: RTC (rtcN) that appeared with the bridge, and its IRQ
find_rtc() {
    RTC=$(new_word "$RTCS0" "$(ls /sys/class/rtc | tr '\n' ' ')")
    RTC_NAME=$(cat /sys/class/rtc/$RTC/name 2>/dev/null)
    need rtc-appeared "rtc=$RTC name='$RTC_NAME' device=$(readlink -f /sys/class/rtc/$RTC/device)" \
        cond '[ -n "$RTC" ] && echo "$RTC_NAME" | grep -q pl031'
    check rtc-registered "$(dmesg_new | grep "registered as $RTC" | tail -n 1)" \
        cond '[ -n "$RTC" ] && dmesg | grep -q "rtc-pl031.*registered as $RTC\$"'
    RTC_IRQ=$(new_word "$RTC_IRQS0" "$(irqs_named rtc-pl031 | tr '\n' ' ')")
    info rtc_irq "$RTC_IRQ $(proc_irq_line "$RTC_IRQ")"
}
# rtc_read: busybox hwclock of /dev/$RTC: HWCLOCK (its line), T (as seconds; empty if unreadable)
rtc_read() {
    HWCLOCK=$(hwclock -r -u -f /dev/$RTC 2>&1)
    T=$(date -u -D '%a %b %d %H:%M:%S %Y' -d "${HWCLOCK%  *seconds}" +%s 2>/dev/null)
}
# find_chip: the gpiochip that appeared with the bridge: CHIP (sysfs dir), BASE, NGPIO
find_chip() {
    CHIP=$(new_word "$CHIPS0" "$(ls -d /sys/class/gpio/gpiochip* | tr '\n' ' ')")
    BASE=$(cat $CHIP/base 2>/dev/null); NGPIO=$(cat $CHIP/ngpio 2>/dev/null)
    need gpiochip-appeared "chip=${CHIP##*/} label=$(cat $CHIP/label 2>/dev/null) base=$BASE ngpio=$NGPIO device=$(readlink -f $CHIP/device)" \
        [ -n "$CHIP" ]
    check gpiochip-ngpio "ngpio=$NGPIO" [ "$NGPIO" = 8 ]
}
gpio_export() {  # gpio_export LINE DIRECTION: G<line> = sysfs dir
    _g=$((BASE + $1))
    echo $_g > /sys/class/gpio/export 2>/dev/null
    [ -d /sys/class/gpio/gpio$_g ] || return 1
    echo "$2" > /sys/class/gpio/gpio$_g/direction || return 1
    eval "G$1=/sys/class/gpio/gpio$_g"
}
# total_counts: "irq:count" of every numbered IRQ but the timers
total_counts() {
    awk '$1 ~ /^[0-9]+:$/ && !/arch_timer|timer/ { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; printf "%s%d ", $1, s }' /proc/interrupts
}
# no_storm: no IRQ line counts more than 3 interrupts in one idle second
no_storm() {
    _a=$(total_counts); sleep 1; _b=$(total_counts)
    STORM=$(for w in $_b; do i=${w%%:*}; n=${w#*:}; for v in $_a; do [ "${v%%:*}" = "$i" ] && [ $((n - ${v#*:})) -gt 3 ] && echo "irq$i+$((n - ${v#*:}))"; done; done | tr '\n' ' ')
    [ -z "$STORM" ]
}
"""

# ---- host actions ------------------------------------------------------------------------


def _control(ctx: HostContext, command: str) -> str:
    reply = ctx.control(command)
    if not reply.startswith("ok"):
        raise HostActionError(reply)
    return reply[2:].strip() or "ok"


def act_control(ctx: HostContext, args: list[str]) -> str:
    """VFU-HOST control WORDS...: one control command, its reply."""
    return _control(ctx, " ".join(args))


def act_control_burst(ctx: HostContext, args: list[str]) -> str:
    """VFU-HOST burst CMD1 ; CMD2 ...: the commands in one write, so the server runs them in one go.

    The control server answers every complete line of one read in order, in the
    same turn of its event loop: lines raised by those commands fire together.
    """
    commands = [c.strip() for c in " ".join(args).split(";") if c.strip()]
    if ctx.control_path is None:
        raise HostActionError("no control socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(ctx.control_path))
        s.sendall("".join(c + "\n" for c in commands).encode())
        buf = b""
        while buf.count(b"\n") < len(commands):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    replies = buf.decode(errors="replace").splitlines()
    ctx.log(f"control burst {commands} -> {replies}")
    if len(replies) != len(commands) or not all(r.startswith("ok") for r in replies):
        raise HostActionError(" | ".join(replies) or "no reply")
    return " | ".join(r[2:].strip() for r in replies)


def act_kill_server(ctx: HostContext, args: list[str]) -> str:
    """VFU-HOST kill-server: SIGKILL the server's process group, wait for it."""
    rc = ctx.kill_server()
    ctx.extras["server_killed_at"] = time.monotonic()
    return f"rc={rc}"


def set_rtc(ctx: HostContext) -> None:
    """Scenario setup: the model's RTC holds RTC_EPOCH when the guest boots."""
    reply = ctx.control(f"pl031 set {RTC_EPOCH}")
    if not reply.startswith("ok"):
        raise HostActionError(f"pl031 set: {reply}")
    ctx.extras["rtc_set"] = RTC_EPOCH


COMMON_ACTIONS = {"control": act_control, "burst": act_control_burst}


# ---- the RTC -----------------------------------------------------------------------------

RTC_BODY = r"""
bridge_load
find_rtc
rtc_read
check rtc-hwclock "hwclock='$HWCLOCK' epoch=$T set=$RTC_SET diff=$((T - RTC_SET))" \
    cond '[ -n "$T" ] && [ $((T - RTC_SET)) -ge 0 ] && [ $((T - RTC_SET)) -lt 120 ]'
host control pl031 get
check rtc-matches-model "guest=$(cat /sys/class/rtc/$RTC/since_epoch) model=$HOST_REPLY" \
    cond '[ "$HOST_STATUS" = ok ] && d=$(( $(cat /sys/class/rtc/$RTC/since_epoch) - ${HOST_REPLY%% *} )) && [ $d -ge -2 ] && [ $d -le 2 ]'
# The alarm: wakealarm +2 must raise the pl031's line, counted on the rtc's IRQ.
C0=$(irq_count "$RTC_IRQ"); B0=$(irq_count "$BRIDGE_IRQ")
echo +2 > /sys/class/rtc/$RTC/wakealarm
ALARM=$(cat /sys/class/rtc/$RTC/wakealarm)
check rtc-alarm-set "wakealarm=$ALARM now=$(cat /sys/class/rtc/$RTC/since_epoch)" [ -n "$ALARM" ]
_t0=$(cut -d' ' -f1 /proc/uptime)
wait_for 15 cond '[ "$(irq_count "$RTC_IRQ")" -gt "$C0" ]'
C1=$(irq_count "$RTC_IRQ"); B1=$(irq_count "$BRIDGE_IRQ")
check rtc-alarm-irq "irq $RTC_IRQ count $C0 -> $C1 after $(awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$_t0" 'BEGIN{printf "%.1fs", a-b}') [$(proc_irq_line "$RTC_IRQ")]" \
    [ "${C1:-0}" -gt "${C0:-0}" ]
info rtc_alarm_counts "rtc_irq=$RTC_IRQ before=$C0 after=$C1 bridge_irq=$BRIDGE_IRQ bridge_before=$B0 bridge_after=$B1"
wait_for 5 cond '[ -z "$(cat /sys/class/rtc/$RTC/wakealarm)" ]'
check rtc-alarm-consumed "wakealarm='$(cat /sys/class/rtc/$RTC/wakealarm)'" [ -z "$(cat /sys/class/rtc/$RTC/wakealarm)" ]
check rtc-no-storm "$(proc_irq_line "$RTC_IRQ") storm='$STORM'" no_storm
if [ "$IRQ_MODE" = msix ]; then
    check rtc-irq-is-msix "irq $RTC_IRQ in msi_irqs=$(ls $BRIDGE_DEV/msi_irqs | tr '\n' ','); $(proc_irq_line "$RTC_IRQ")" \
        [ -e "$BRIDGE_DEV/msi_irqs/$RTC_IRQ" ]
else
    check rtc-intx-counted "bridge INTx irq $BRIDGE_IRQ $B0 -> $B1" [ "${B1:-0}" -gt "${B0:-0}" ]
fi
check rtc-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared' | head -n 2)" healthy
"""


def rtc_pl031(irq_mode: str = "intx") -> Scenario:
    """rtc-pl031 on `--device pl031`: time as set in the model, an alarm IRQ through the bridge."""
    return Scenario(name=f"rtc-pl031-{irq_mode}", arch="arm64", device="pl031", irq_mode=irq_mode,
                    body=SHLIB + RTC_BODY, params={"RTC_SET": RTC_EPOCH, "IRQ_MODE": irq_mode},
                    actions=dict(COMMON_ACTIONS), setup=set_rtc)


# ---- the GPIO ----------------------------------------------------------------------------

GPIO_BODY = r"""
bridge_load
find_chip
# Output: the guest drives GPIO_OUT, the model's pin follows.
gpio_export $GPIO_OUT out
check gpio-export-out "line $GPIO_OUT = gpio$((BASE + GPIO_OUT)) dir=$(cat $G0/direction 2>&1)" [ -n "$G0" ]
echo 1 > $G0/value; host control pl061 get $GPIO_OUT; R1="$HOST_STATUS $HOST_REPLY"
echo 0 > $G0/value; host control pl061 get $GPIO_OUT; R0="$HOST_STATUS $HOST_REPLY"
check gpio-output-seen-by-model "after 1: $R1; after 0: $R0" [ "$R1" = "ok 1 out" -a "$R0" = "ok 0 out" ]
# Input: the host drives GPIO_IN; the guest reads it and waits for the rising edge.
host control pl061 set $GPIO_IN 0
gpio_export $GPIO_IN in
GI=$(eval echo \$G$GPIO_IN)
check gpio-export-in "line $GPIO_IN = ${GI##*/} value=$(cat $GI/value 2>&1)" cond '[ -n "$GI" ] && [ "$(cat $GI/value)" = 0 ]'
echo rising > $GI/edge
check gpio-edge-rising "edge=$(cat $GI/edge) irq=$(irqs_named gpiolib | tr '\n' ' ')" [ "$(cat $GI/edge)" = rising ]
GIRQ=$(irqs_named gpiolib | head -n 1)
E0=$(irq_count "$GIRQ")
gpio-wait $GI/value 15000 > /tmp/gw 2>&1 & GW=$!
wait_for 5 grep -q armed /tmp/gw
host control pl061 set $GPIO_IN 1; SETR="$HOST_STATUS $HOST_REPLY"
wait $GW; GWRC=$?
E1=$(irq_count "$GIRQ")
check gpio-input-edge-seen "host: $SETR; gpio-wait rc=$GWRC: $(tr '\n' ' ' < /tmp/gw)" \
    cond '[ "$GWRC" = 0 ] && grep -q "edge value=1" /tmp/gw'
check gpio-edge-irq-counted "gpio irq $GIRQ count $E0 -> $E1 [$(proc_irq_line "$GIRQ")]" [ "${E1:-0}" -eq $(( ${E0:-0} + 1 )) ]
check gpio-input-level "value=$(cat $GI/value)" [ "$(cat $GI/value)" = 1 ]
# The falling edge must not wake a waiter that asked for rising edges only.
gpio-wait $GI/value 1500 > /tmp/gw2 2>&1 & GW=$!
wait_for 5 grep -q armed /tmp/gw2
host control pl061 set $GPIO_IN 0
wait $GW; GWRC=$?
check gpio-falling-edge-ignored "gpio-wait rc=$GWRC: $(tr '\n' ' ' < /tmp/gw2) count=$(irq_count "$GIRQ")" \
    cond '[ "$GWRC" = 1 ] && grep -q "timeout value=0" /tmp/gw2'
info gpio_counts "gpio_irq=$GIRQ before=$E0 after_rising=$E1 end=$(irq_count "$GIRQ")"
check gpio-no-storm "storm='$STORM'" no_storm
check gpio-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared' | head -n 2)" healthy
"""


def gpio_pl061(irq_mode: str = "intx") -> Scenario:
    """gpio-pl061 on `--device pl061`: ngpio 8, a host-driven input edge, a guest-driven output."""
    return Scenario(name=f"gpio-pl061-{irq_mode}", arch="arm64", device="pl061", irq_mode=irq_mode,
                    body=SHLIB + GPIO_BODY, params={"GPIO_OUT": GPIO_OUT, "GPIO_IN": GPIO_IN},
                    actions=dict(COMMON_ACTIONS))


# ---- pl031 + pl061 in one group: two lines at once ----------------------------------------

GROUP_BODY = r"""
bridge_load
find_rtc
find_chip
host control pl061 set $GPIO_IN 0
gpio_export $GPIO_IN in
GI=$(eval echo \$G$GPIO_IN)
echo rising > $GI/edge
GIRQ=$(irqs_named gpiolib | head -n 1)
check group-gpio-ready "line $GPIO_IN = ${GI##*/} edge=$(cat $GI/edge) irq=$GIRQ" [ -n "$GIRQ" ]
# An alarm far enough ahead not to fire by itself; the host then moves the RTC onto it
# and raises the GPIO input in the same turn of the server's loop.
echo +300 > /sys/class/rtc/$RTC/wakealarm
ALARM=$(cat /sys/class/rtc/$RTC/wakealarm)
check group-alarm-set "wakealarm=$ALARM" [ -n "$ALARM" ]
rtc_read
check group-hwclock "hwclock='$HWCLOCK' epoch=$T set=$RTC_SET diff=$((T - RTC_SET))" \
    cond '[ -n "$T" ] && [ $((T - RTC_SET)) -ge 0 ] && [ $((T - RTC_SET)) -lt 120 ]'
C0=$(irq_count "$RTC_IRQ"); E0=$(irq_count "$GIRQ"); B0=$(irq_count "$BRIDGE_IRQ")
gpio-wait $GI/value 15000 > /tmp/gw 2>&1 & GW=$!
wait_for 5 grep -q armed /tmp/gw
host burst pl031 set $ALARM \; pl061 set $GPIO_IN 1
BURST="$HOST_STATUS $HOST_REPLY"
wait $GW; GWRC=$?
wait_for 10 cond '[ "$(irq_count "$RTC_IRQ")" -gt "$C0" ]'
C1=$(irq_count "$RTC_IRQ"); E1=$(irq_count "$GIRQ"); B1=$(irq_count "$BRIDGE_IRQ")
check group-raise "host: $BURST" [ "${BURST%% *}" = ok ]
check group-gpio-edge-seen "gpio-wait rc=$GWRC: $(tr '\n' ' ' < /tmp/gw); gpio irq $GIRQ $E0 -> $E1" \
    cond '[ "$GWRC" = 0 ] && grep -q "edge value=1" /tmp/gw && [ "${E1:-0}" -gt "${E0:-0}" ]'
check group-rtc-alarm-irq "rtc irq $RTC_IRQ $C0 -> $C1" [ "${C1:-0}" -gt "${C0:-0}" ]
wait_for 5 cond '[ -z "$(cat /sys/class/rtc/$RTC/wakealarm)" ]'
check group-rtc-alarm-consumed "wakealarm='$(cat /sys/class/rtc/$RTC/wakealarm)' time=$(cat /sys/class/rtc/$RTC/since_epoch) alarm=$ALARM" \
    [ -z "$(cat /sys/class/rtc/$RTC/wakealarm)" ]
info group_counts "rtc_irq=$RTC_IRQ $C0->$C1 gpio_irq=$GIRQ $E0->$E1 bridge_irq=$BRIDGE_IRQ $B0->$B1"
check group-bridge-intx "bridge INTx irq $BRIDGE_IRQ $B0 -> $B1 (two deliveries: >= 2)" [ $(( ${B1:-0} - ${B0:-0} )) -ge 2 ]
check group-no-storm "storm='$STORM'" no_storm
check group-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared' | head -n 2)" healthy
"""


def group_fifo() -> Scenario:
    """`--device pl031,pl061` on INTx: the RTC alarm and a GPIO edge raised in the same instant."""
    return Scenario(name="group-pl031-pl061-intx", arch="arm64", device="pl031,pl061", irq_mode="intx",
                    body=SHLIB + GROUP_BODY, params={"GPIO_IN": GPIO_IN, "RTC_SET": RTC_EPOCH},
                    actions=dict(COMMON_ACTIONS), setup=set_rtc)


# ---- module unload and server loss --------------------------------------------------------

USE_BOTH = r"""
bridge_load
find_rtc
find_chip
rtc_read
check use-rtc "hwclock='$HWCLOCK'" [ -n "$T" ]
gpio_export $GPIO_IN in
GI=$(eval echo \$G$GPIO_IN)
echo rising > $GI/edge 2>/dev/null
check use-gpio "${GI##*/} value=$(cat $GI/value 2>&1) edge=$(cat $GI/edge 2>&1)" [ -n "$GI" ]
GIRQ=$(irqs_named gpiolib | head -n 1); E0=$(irq_count "$GIRQ")
host control pl061 set $GPIO_IN 1
wait_for 5 cond '[ "$(irq_count "$GIRQ")" -gt "${E0:-0}" ]'
check use-gpio-edge "host: $HOST_STATUS $HOST_REPLY; gpio irq $GIRQ $E0 -> $(irq_count "$GIRQ")" \
    cond '[ "$(irq_count "$GIRQ")" -gt "${E0:-0}" ]'
# leave an alarm armed: teardown must cope with it
echo +300 > /sys/class/rtc/$RTC/wakealarm
check use-rtc-alarm-armed "wakealarm=$(cat /sys/class/rtc/$RTC/wakealarm)" [ -n "$(cat /sys/class/rtc/$RTC/wakealarm)" ]
"""

RMMOD_BODY = USE_BOTH + r"""
echo $((BASE + GPIO_IN)) > /sys/class/gpio/unexport
_out=$(rmmod vfu_bridge 2>&1); _rc=$?
check rmmod "rc=$_rc $_out" [ $_rc -eq 0 ]
check rmmod-rtc-gone "rtcs: $(ls /sys/class/rtc | tr '\n' ' ')" [ ! -e /sys/class/rtc/$RTC ]
check rmmod-gpiochip-gone "chips: $(ls /sys/class/gpio | tr '\n' ' ')" [ ! -e "$CHIP" ]
BRIDGE_ACTIONS=$(cat /sys/kernel/irq/$BRIDGE_IRQ/actions 2>/dev/null)
NOW_RTC_IRQS=$(irqs_named rtc-pl031 | tr '\n' ' '); NOW_GPIOLIB=$(irqs_named gpiolib | tr '\n' ' ')
check rmmod-irqs-released "rtc-pl031 irqs: $NOW_RTC_IRQS(before insmod: $RTC_IRQS0); gpiolib: '$NOW_GPIOLIB'; INTx irq $BRIDGE_IRQ actions: '$BRIDGE_ACTIONS'" \
    cond '[ "$NOW_RTC_IRQS" = "$RTC_IRQS0" ] && [ -z "$NOW_GPIOLIB" ] && [ -z "$BRIDGE_ACTIONS" ]'
check rmmod-device-unbound "driver link: $(readlink $BRIDGE_DEV/driver 2>&1)" [ ! -e "$BRIDGE_DEV/driver" ]
check rmmod-no-storm "storm='$STORM'" no_storm
check rmmod-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared|Call trace' | head -n 3)" healthy
# The way back: the same module binds again and the RTC reads again.
RTCS0=$(ls /sys/class/rtc | tr '\n' ' ')
_out=$(insmod /lib/modules/vfu_bridge.ko 2>&1); _rc=$?
RTC=$(new_word "$RTCS0" "$(ls /sys/class/rtc | tr '\n' ' ')")
rtc_read
check reinsmod "rc=$_rc rtc=$RTC hwclock='$HWCLOCK' $_out" cond '[ "$_rc" = 0 ] && [ -n "$T" ]'
_out=$(rmmod vfu_bridge 2>&1); _rc=$?
check rermmod "rc=$_rc $_out" [ $_rc -eq 0 ]
check final-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared|Call trace' | head -n 3)" healthy
"""


def rmmod_healthy() -> Scenario:
    """Bind, use both devices, `rmmod vfu_bridge`: nothing left behind, and it binds again."""
    return Scenario(name="rmmod-healthy", arch="arm64", device="pl031,pl061", irq_mode="intx",
                    body=SHLIB + RMMOD_BODY, params={"GPIO_IN": GPIO_IN},
                    actions=dict(COMMON_ACTIONS), setup=set_rtc)


SERVER_KILLED_BODY = USE_BOTH + r"""
host kill-server
check server-killed "$HOST_STATUS $HOST_REPLY" [ "$HOST_STATUS" = ok ]
# The guest must stay alive: reads of a dead device may fail or return all-ones, but
# nothing may hang for good, oops or storm.
_t0=$(cut -d' ' -f1 /proc/uptime)
(hwclock -r -u -f /dev/$RTC > /tmp/hw 2>&1; echo "rc=$?" >> /tmp/hw) & HW=$!
wait_for 30 cond '! kill -0 $HW 2>/dev/null'
check dead-rtc-read-returns "$(tr '\n' ' ' < /tmp/hw) after $(awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$_t0" 'BEGIN{printf "%.1fs", a-b}')" \
    cond '! kill -0 $HW 2>/dev/null'
(rmmod vfu_bridge > /tmp/rm 2>&1; echo "rc=$?" >> /tmp/rm) & RM=$!
_t0=$(cut -d' ' -f1 /proc/uptime)
wait_for 45 cond '! kill -0 $RM 2>/dev/null'
check dead-rmmod-returns "$(tr '\n' ' ' < /tmp/rm) after $(awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$_t0" 'BEGIN{printf "%.1fs", a-b}')" \
    cond '! kill -0 $RM 2>/dev/null'
check dead-no-storm "storm='$STORM'" no_storm
check dead-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared|Call trace' | head -n 3)" healthy
check dead-guest-responsive "uptime=$(cut -d' ' -f1 /proc/uptime) load=$(cut -d' ' -f1-3 /proc/loadavg)" true
"""


def server_killed() -> Scenario:
    """The server is SIGKILLed while the guest has both devices bound: the guest stays healthy."""
    actions = dict(COMMON_ACTIONS)
    actions["kill-server"] = act_kill_server
    return Scenario(name="server-killed", arch="arm64", device="pl031,pl061", irq_mode="intx",
                    body=SHLIB + SERVER_KILLED_BODY, params={"GPIO_IN": GPIO_IN},
                    actions=actions, setup=set_rtc, timeout=150.0)


# ---- x86: dw-apb-uart through 8250_dw ------------------------------------------------------


class UartPeer:
    """The host end of the model's `port=unix:PATH`: connects, collects what the guest sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received = bytearray()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.path))
                break
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    raise HostActionError(f"cannot connect to the UART's host port {self.path}: {e}") from None
                time.sleep(0.05)
        self._sock = s
        self._thread = threading.Thread(target=self._reader, name="uart-peer", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        assert self._sock is not None
        fd = self._sock.fileno()
        while not self._stop.is_set():
            r, _, _ = select.select([fd], [], [], 0.2)
            if not r:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received += data

    def text(self) -> str:
        with self._lock:
            return self.received.decode(errors="replace")

    def send(self, data: bytes) -> None:
        if self._sock is None:
            raise HostActionError("the UART's host port is not connected")
        self._sock.sendall(data)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()


def _uart_peer(ctx: HostContext) -> UartPeer:
    peer = ctx.extras.get("uart_peer")
    if not isinstance(peer, UartPeer):
        raise HostActionError("no UART peer")
    return peer


def act_uart_expect(ctx: HostContext, args: list[str]) -> str:
    """VFU-HOST uart-expect TOKEN: did the host side receive TOKEN (waits up to 10 s)?"""
    peer, token = _uart_peer(ctx), args[0]
    deadline = time.monotonic() + 10
    while token not in peer.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    got = peer.text()
    ctx.extras["uart_received"] = got
    if token not in got:
        raise HostActionError(f"host got {got[-80:]!r}, not {token!r}")
    return f"received {len(got)} bytes"


def act_uart_send(ctx: HostContext, args: list[str]) -> str:
    """VFU-HOST uart-send TOKEN: write TOKEN and a newline into the UART's receiver."""
    _uart_peer(ctx).send(args[0].encode() + b"\n")
    return "sent"


UART_BODY = r"""
bridge_load
PLAT=$(ls -d /sys/bus/platform/devices/dw-apb-uart* 2>/dev/null | head -n 1)
PLAT_REAL=$(readlink -f "$PLAT" 2>/dev/null)
DRV=$(basename "$(readlink -f "$PLAT/driver" 2>/dev/null)")
check uart-platform-device "${PLAT##*/} at $PLAT_REAL driver=$DRV" \
    cond '[ -n "$PLAT" ] && [ "$DRV" = dw-apb-uart ] && case "$PLAT_REAL" in "$BRIDGE_DEV"/*) true ;; *) false ;; esac'
TTY=
for t in /sys/class/tty/ttyS*; do
    case $(readlink -f $t/device 2>/dev/null) in "$PLAT_REAL"/*|"$PLAT_REAL") TTY=${t##*/} ;; esac
done
need uart-tty-appeared "tty=$TTY device=$(readlink -f /sys/class/tty/$TTY/device 2>/dev/null) $(dmesg_new | grep -E "dw-apb" | tail -n 2 | tr '\n' '|')" \
    cond '[ -n "$TTY" ] && [ -c "/dev/$TTY" ]'
UIRQ=$(cat /sys/class/tty/$TTY/irq 2>/dev/null)
exec 3<>/dev/$TTY
stty -F /dev/$TTY 115200 raw -echo -echoe -echok -echoctl -echoke -icrnl -opost icanon
check uart-open "$(stty -F /dev/$TTY 2>&1 | head -n 1)" true
U0=$(irq_count "$UIRQ")  # requested while the port is open
echo "$TX_TOKEN" >&3
host uart-expect $TX_TOKEN
check uart-guest-to-host "$HOST_STATUS $HOST_REPLY" [ "$HOST_STATUS" = ok ]
host uart-send $RX_TOKEN
RX=
read -r -t 10 RX <&3
check uart-host-to-guest "host: $HOST_STATUS $HOST_REPLY; guest read '$RX'" [ "$RX" = "$RX_TOKEN" ]
U1=$(irq_count "$UIRQ"); ULINE=$(proc_irq_line "$UIRQ")
exec 3>&-
check uart-irq-counted "irq $UIRQ count $U0 -> $U1 [$ULINE]" [ "${U1:-0}" -gt "${U0:-0}" ]
check uart-no-storm "storm='$STORM'" no_storm
check uart-kernel-log-clean "$(dmesg_new | grep -E 'WARNING|Oops|BUG|nobody cared' | head -n 2)" healthy
"""


def dw_apb_uart(irq_mode: str = "intx", options: tuple[str, ...] = ()) -> Scenario:
    """x86 q35, `--device dw-apb-uart`: 8250_dw binds, /dev/ttyS<n> echoes through the host port.

    `options`: model options ("busy_detect=false"), each passed as `-o`.
    """

    def setup(ctx: HostContext) -> None:
        peer = UartPeer(ctx.workdir / "uart.sock")
        peer.connect()
        ctx.extras["uart_peer"] = peer

    def teardown(ctx: HostContext) -> None:
        peer = ctx.extras.pop("uart_peer", None)
        if isinstance(peer, UartPeer):
            ctx.extras["uart_received"] = peer.text()
            peer.close()

    suffix = "".join(f"-{o.replace('=', '-').replace('_', '-')}" for o in options)
    extra = tuple(w for o in options for w in ("-o", o))
    return Scenario(name=f"dw-apb-uart-{irq_mode}{suffix}", arch="amd64", device="dw-apb-uart", irq_mode=irq_mode,
                    body=SHLIB + UART_BODY,
                    params={"TX_TOKEN": "guest-says-hello-8250dw", "RX_TOKEN": "host-says-hi"},
                    actions={**COMMON_ACTIONS, "uart-expect": act_uart_expect, "uart-send": act_uart_send},
                    setup=setup, teardown=teardown, control=False,
                    # {workdir}: DriverRun puts the port in the run's own directory
                    server_extra=("-o", "port=unix:{workdir}/uart.sock", *extra))


def all_scenarios() -> list[Scenario]:
    return [rtc_pl031("intx"), rtc_pl031("msix"), gpio_pl061(), group_fifo(), rmmod_healthy(), server_killed(),
            dw_apb_uart()]
