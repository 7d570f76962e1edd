"""Attaching to a TAP the way Firecracker does at ``PUT /network-interfaces``.

Firecracker opens ``/dev/net/tun`` and runs ``TUNSETIFF`` on the named TAP when
the interface is PUT, so every TAP problem is that call's 400 (behaviour notes,
the network-interface rows): a TAP another process holds is busy, a missing one
cannot be made without CAP_NET_ADMIN, a name of another kind of device is
invalid, and as root a missing TAP is simply created (non-persistent, gone with
the process). The double makes the same call, for the same kernel answers, then
lets go of the TAP so that a QEMU guest can take it at InstanceStart.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFREQ_SIZE = 40


def ifreq(name: str, flags: int) -> bytes:
    """The ``struct ifreq`` TUNSETIFF takes: the device name and its flags."""
    return struct.pack("16sH", name.encode(), flags).ljust(IFREQ_SIZE, b"\0")


def attach_error(name: str, device: str = "/dev/net/tun") -> str | None:
    """Firecracker's error text for attaching to TAP ``name``, or None if it works.

    ``device``: the TUN clone device to open (the jail's own, under the jailer).
    """
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return _refusal(name, exc)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as exc:
        return _refusal(name, exc)
    finally:
        os.close(fd)
    return None


def _refusal(name: str, exc: OSError) -> str:
    # Rust prints an io::Error as its strerror text and "(os error N)".
    reason = f"{os.strerror(exc.errno or 0)} (os error {exc.errno})"
    return (
        "Open tap device failed: Error while creating ifreq structure: "
        f"{reason}. Invalid TUN/TAP Backend provided by {name}. Check our "
        "documentation on setting up the network devices."
    )
