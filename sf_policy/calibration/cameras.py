"""Camera discovery and role assignment by serial number.

Role assignment must survive reboots and replugging, which ``/dev/videoN`` numbers and USB
port order do not. RealSense cameras are picked by serial already (the driver looks the
serial up); UVC cameras get their USB serial from sysfs and are written to cameras.yaml as
their ``/dev/v4l/by-id/...`` link, which udev names after vendor, product and serial, so
the path keeps pointing at the same camera.

Discovery is injectable for tests: RealSense devices can be handed in (pyrealsense2 does
not list ``rs.software_device``), and sysfs / /dev are roots that can point at a fake tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_camera_config
from ..topics import CAMERA_ROLES
from .yaml_edit import REMOVE, update_checked

INTEL_VENDOR_ID = "8086"  # RealSense cameras also show up as V4L2 nodes; they are listed once, as RealSense


class AssignmentError(ValueError):
    """A role assignment cannot be made; the message names the role and the serial."""


@dataclass(frozen=True)
class CameraDevice:
    kind: str            # "realsense" or "v4l2"
    serial: str          # RealSense serial, or the USB serial of a UVC camera ("" when it has none)
    name: str            # product name
    firmware: str = ""   # RealSense firmware version
    device: str = ""     # v4l2: the path for cameras.yaml (by-id link when there is one)
    node: str = ""       # v4l2: /dev/videoN
    usb: str = ""        # USB port path (bus-port.port), or the RealSense physical port

    def describe(self) -> str:
        where = self.device or self.usb
        fw = f", firmware {self.firmware}" if self.firmware else ""
        return f"{self.serial or '(no serial)'} ({self.name}{fw}{', ' + where if where else ''})"


# --- discovery -------------------------------------------------------------------------
def realsense_devices(context: Any | None = None, devices: Iterable[Any] = ()) -> list[CameraDevice]:
    """RealSense cameras from librealsense; an empty list when pyrealsense2 is missing."""
    try:
        import pyrealsense2 as rs
    except ImportError:
        return []
    listed = list(context.query_devices() if context is not None else rs.context().query_devices())
    found: dict[str, CameraDevice] = {}
    for dev in [*listed, *devices]:
        def info(key, dev=dev) -> str:
            field = getattr(rs.camera_info, key)
            return str(dev.get_info(field)) if dev.supports(field) else ""

        serial = info("serial_number")
        if serial and serial not in found:
            found[serial] = CameraDevice("realsense", serial, info("name"), info("firmware_version"),
                                         usb=info("physical_port"))
    return list(found.values())


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _usb_device_dir(node_dir: Path, sysfs: Path) -> Path | None:
    """The USB device (the folder with idVendor and serial) above a video4linux node."""
    try:
        current = (node_dir / "device").resolve()
    except OSError:
        return None
    root = sysfs.resolve()
    while current != current.parent and (current == root or root in current.parents):
        if (current / "idVendor").is_file():
            return current
        current = current.parent
    return None


def _by_id_links(dev: Path) -> dict[str, str]:
    """/dev/videoN -> its /dev/v4l/by-id link (udev's stable name), when udev made one."""
    links: dict[str, str] = {}
    folder = dev / "v4l" / "by-id"
    if folder.is_dir():
        for link in sorted(folder.iterdir()):
            target = os.path.normpath(os.path.join(link.parent, os.readlink(link))) if link.is_symlink() else ""
            if target and "video-index0" in link.name:  # index0: the capture node, not metadata
                links[Path(target).name] = str(link)
    return links


def v4l2_devices(sysfs: str | Path = "/sys", dev: str | Path = "/dev") -> list[CameraDevice]:
    """UVC capture nodes (V4L2 index 0) with their USB serials; RealSense nodes are left out."""
    sysfs, dev = Path(sysfs), Path(dev)
    folder = sysfs / "class" / "video4linux"
    if not folder.is_dir():
        return []
    links = _by_id_links(dev)
    found = []
    for node_dir in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)):
        if _read(node_dir / "index") not in ("", "0"):
            continue  # metadata and second nodes of the same camera
        usb = _usb_device_dir(node_dir, sysfs)
        if usb is not None and _read(usb / "idVendor") == INTEL_VENDOR_ID:
            continue
        node = str(dev / node_dir.name)
        name = _read(node_dir / "name") or (_read(usb / "product") if usb else "") or node_dir.name
        found.append(CameraDevice("v4l2", _read(usb / "serial") if usb else "", name,
                                  device=links.get(node_dir.name, node), node=node, usb=usb.name if usb else ""))
    return found


def discover(rs_context: Any | None = None, rs_devices: Iterable[Any] = (), sysfs: str | Path = "/sys",
             dev: str | Path = "/dev") -> list[CameraDevice]:
    return [*realsense_devices(rs_context, rs_devices), *v4l2_devices(sysfs, dev)]


# --- assignment ------------------------------------------------------------------------
def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``["cam_high=123", ...]`` -> {role: serial}; errors name the bad pair."""
    result: dict[str, str] = {}
    for pair in pairs:
        role, sep, key = pair.partition("=")
        role, key = role.strip(), key.strip()
        if not sep or not role or not key:
            raise AssignmentError(f"--assign {pair!r}: expected ROLE=SERIAL, e.g. cam_high=123456789012")
        if role not in CAMERA_ROLES:
            raise AssignmentError(f"--assign {pair!r}: unknown role {role!r}; roles: {', '.join(CAMERA_ROLES)}")
        if role in result:
            raise AssignmentError(f"--assign {pair!r}: role {role} is assigned twice")
        result[role] = key
    return result


def find_device(devices: list[CameraDevice], key: str, role: str) -> CameraDevice:
    """The device with serial ``key`` (or, for UVC cameras without a serial, that device path)."""
    matches = [d for d in devices if key in (d.serial, d.device, d.node) and key]
    if not matches:
        present = "; ".join(d.describe() for d in devices) or "no cameras found"
        raise AssignmentError(f"{role}={key}: no camera with serial {key!r}; present: {present}")
    if len(matches) > 1:
        raise AssignmentError(f"{role}={key}: {len(matches)} cameras share serial {key!r} "
                              f"({'; '.join(d.describe() for d in matches)}); assign them by device path")
    return matches[0]


def plan_assignments(assignments: dict[str, str], devices: list[CameraDevice]) -> dict[str, CameraDevice]:
    chosen: dict[str, CameraDevice] = {}
    for role, key in assignments.items():
        device = find_device(devices, key, role)
        other = next((r for r, d in chosen.items() if d == device), None)
        if other is not None:
            raise AssignmentError(f"{role}={key}: the same camera is already assigned to {other}")
        chosen[role] = device
    return chosen


def _updates(role: str, device: CameraDevice) -> list[tuple[list[str], Any]]:
    base = ["cameras", role]
    if device.kind == "realsense":
        return [(base + ["backend"], "realsense"), (base + ["serial"], device.serial), (base + ["device"], REMOVE)]
    return [(base + ["backend"], "opencv"), (base + ["device"], device.device), (base + ["serial"], REMOVE)]


def write_assignments(config: str | Path, chosen: dict[str, CameraDevice]) -> bool:
    """Sets backend and serial/device of each role in cameras.yaml, keeping the rest of the
    file; the result is validated before it replaces the file. True: comments were kept."""
    config = Path(config)
    updates = [u for role, device in chosen.items() for u in _updates(role, device)]

    def check(trial: Path) -> None:
        try:
            load_camera_config(trial)
        except ConfigError as exc:  # e.g. another role of the file still names this camera
            raise AssignmentError(str(exc).replace(str(trial), str(config))) from exc

    return update_checked(config, updates, check)


def ask_assignments(devices: list[CameraDevice], ask: Callable[[str], str],
                    roles: Iterable[str] = CAMERA_ROLES) -> dict[str, str]:
    """Interactive: for each role, the operator answers a list number, a serial, or nothing (skip)."""
    result: dict[str, str] = {}
    for role in roles:
        answer = ask(role).strip()
        if not answer:
            continue
        if answer.isdigit() and 1 <= int(answer) <= len(devices) and len(answer) <= 3:
            device = devices[int(answer) - 1]
            answer = device.serial or device.device
        result[role] = answer
    return result
