#!/usr/bin/env bash
# Bring the Pipers' USB-CAN adapters up at 1 Mbit/s under stable names (can_left, can_right).
#
#   scripts/can_setup.sh list                                   # CAN interfaces and their USB ports
#   scripts/can_setup.sh up can_left=1-2:1.0 can_right=1-4:1.0  # name them by USB port, 1 Mbit/s, up
#   scripts/can_setup.sh up                                     # the same, mapping from $SF_CAN_PORTS
#   scripts/can_setup.sh check can_left can_right               # up? bitrate? frames arriving?
#
# Why by USB port: the kernel numbers gs_usb adapters can0, can1... in the order it finds
# them, which changes between boots; the USB port an adapter is plugged into does not. Find a
# port with `list` while plugging one adapter at a time; keep each adapter in its port.
# The names must match config/robot.yaml (and masters.yaml for the software link).
#
# Options: --bitrate N (default 1000000, the Piper's), --dry-run (print the ip commands only).
# Needs root for `ip link set` (uses sudo when not root; in Docker: the `can` compose service).
# Reads interfaces from sysfs ($SF_SYSFS, default /sys), so it needs neither ethtool nor a
# particular ip version to find them.
set -euo pipefail

SYSFS=${SF_SYSFS:-/sys}
BITRATE=1000000
DRY_RUN=0
ARPHRD_CAN=280

die() { echo "can_setup: $*" >&2; exit 1; }

run() {
  if ((DRY_RUN)); then echo "$*"; return; fi
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

can_interfaces() {  # names of the network interfaces of type CAN
  local dev
  for dev in "$SYSFS"/class/net/*; do
    [ -e "$dev/type" ] && [ "$(cat "$dev/type")" = "$ARPHRD_CAN" ] && basename "$dev"
  done
  return 0
}

usb_port() {  # an interface's USB port as ethtool's bus-info shows it, e.g. 1-2:1.0
  local target
  target=$(readlink -f "$SYSFS/class/net/$1/device" 2>/dev/null) || { echo "-"; return; }
  basename "$target"
}

state() { cat "$SYSFS/class/net/$1/operstate" 2>/dev/null || echo "?"; }

bitrate() {
  ip -details link show "$1" 2>/dev/null | sed -n 's/.*bitrate \([0-9]*\).*/\1/p' | head -n1
}

cmd_list() {
  local found=0 iface
  printf '%-14s %-16s %-8s %s\n' interface usb_port state bitrate
  for iface in $(can_interfaces); do
    found=1
    printf '%-14s %-16s %-8s %s\n' "$iface" "$(usb_port "$iface")" "$(state "$iface")" "$(bitrate "$iface")"
  done
  ((found)) || echo "(no CAN interfaces: is a USB-CAN adapter plugged in? \`lsusb\`, \`dmesg | grep gs_usb\`)"
}

cmd_up() {
  local mappings=("$@") pair name port iface ifaces n_taken=0
  if ((${#mappings[@]} == 0)); then
    read -r -a mappings <<< "${SF_CAN_PORTS:-}"
  fi
  ((${#mappings[@]})) || die "no mapping: give NAME=USB_PORT pairs or set SF_CAN_PORTS (see \`$0 list\`)"
  ifaces=$(can_interfaces)
  [ -n "$ifaces" ] || die "no CAN interfaces found"
  declare -A chosen=() names_used=()
  for pair in "${mappings[@]}"; do
    name=${pair%%=*}
    port=${pair#*=}
    [ "$pair" != "$name" ] || port=""
    ((${#name} <= 15)) || die "$name: interface names are at most 15 characters"
    iface=""
    if [ -z "$port" ]; then
      # a bare NAME: only meaningful with a single adapter
      (($(wc -w <<< "$ifaces") == 1)) || die "$name: several CAN interfaces, give its USB port ($name=PORT); see \`$0 list\`"
      iface=$ifaces
    else
      for candidate in $ifaces; do
        [ "$(usb_port "$candidate")" = "$port" ] && iface=$candidate
      done
      [ -n "$iface" ] || die "$name: no CAN interface on USB port $port; found: $(for i in $ifaces; do printf '%s@%s ' "$i" "$(usb_port "$i")"; done)"
    fi
    [ -z "${chosen[$iface]:-}" ] || die "$iface is mapped twice (${chosen[$iface]} and $name)"
    [ -z "${names_used[$name]:-}" ] || die "$name is given twice"
    chosen[$iface]=$name
    names_used[$name]=1
  done
  # A target name held by another adapter (e.g. swapping can0 and can1): move it aside first.
  for iface in "${!chosen[@]}"; do
    [ -n "${chosen[$iface]:-}" ] || continue  # moved aside in an earlier round
    name=${chosen[$iface]}
    if [ "$iface" != "$name" ] && [ -e "$SYSFS/class/net/$name" ] && [ -n "${chosen[$name]:-}" ]; then
      run ip link set "$name" down
      run ip link set "$name" name "sf_tmp$n_taken"
      chosen["sf_tmp$n_taken"]=${chosen[$name]}
      unset "chosen[$name]"
      n_taken=$((n_taken + 1))
    elif [ "$iface" != "$name" ] && [ -e "$SYSFS/class/net/$name" ]; then
      die "$name already exists and is not being renamed; pick another name or unplug it"
    fi
  done
  for iface in $(printf '%s\n' "${!chosen[@]}" | sort); do
    name=${chosen[$iface]}
    run ip link set "$iface" down
    run ip link set "$iface" type can bitrate "$BITRATE"
    [ "$iface" = "$name" ] || run ip link set "$iface" name "$name"
    run ip link set "$name" up
    ((DRY_RUN)) || echo "$name: up at $BITRATE bit/s (was $iface on USB port $(usb_port "$name"))"
  done
}

cmd_check() {
  local names=("$@") name ok=1 rate frames
  ((${#names[@]})) || names=(can_left can_right)
  for name in "${names[@]}"; do
    if [ ! -e "$SYSFS/class/net/$name" ]; then
      echo "$name: missing (run \`$0 up ...\`)"; ok=0; continue
    fi
    rate=$(bitrate "$name")
    frames=$(timeout 1 candump -n 50 "$name" 2>/dev/null | wc -l || true)
    echo "$name: state $(state "$name"), bitrate ${rate:-?}, $frames frames in 1 s (USB port $(usb_port "$name"))"
    [ "$(state "$name")" != "down" ] || ok=0
    [ "${rate:-$BITRATE}" = "$BITRATE" ] || ok=0
    # A powered Piper streams feedback at ~200 Hz per frame ID: silence means no power or a loose cable.
    [ "$frames" -gt 0 ] || { echo "  $name: no frames: is the arm powered and its CAN cable seated?"; ok=0; }
  done
  ((ok))
}

command=${1:-list}
shift || true
args=()
while (($#)); do
  case $1 in
    --bitrate) BITRATE=${2:?--bitrate needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done

case $command in
  list) cmd_list ;;
  up) cmd_up "${args[@]}" ;;
  check) cmd_check "${args[@]}" ;;
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command $command (list, up, check)" ;;
esac
