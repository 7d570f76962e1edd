"""A Firecracker test double: the real API on a Unix socket, a stand-in guest.

Run it as ``python -m tests.fcdouble --api-sock PATH --id ID`` or through the
``firecracker`` launcher next to this file. Behaviour knobs come from the
environment so that a driver under test can start it like the real binary:

- ``FCDOUBLE_FAIL``: lines ``KEY:fault message``; the request whose KEY matches
  (a first path segment such as ``boot-source`` or ``drives``, or an action type
  such as ``InstanceStart``) fails with that message once it passes validation.
- ``FCDOUBLE_LOG``: the JSONL request log (default: ``<api-sock>.requests.jsonl``).
- ``FCDOUBLE_BACKEND``: ``standin`` (default) or ``qemu`` (see below).
- ``FCDOUBLE_GUEST``: ``ignore-cad`` makes the stand-in guest ignore
  SendCtrlAltDel.
- ``FCDOUBLE_IGNORE_SIGTERM=1``: behave like Firecracker as PID 1 of a pid
  namespace (jailer ``--new-pid-ns``), where SIGTERM is dropped.
- ``FCDOUBLE_BIND_DELAY``: seconds to wait before binding the socket.
- ``FCDOUBLE_EXIT``: exit at once with this code, before binding.
- ``FCDOUBLE_CHROOT``: set by the ``jailer`` double (``tests.fcdouble.jailer``):
  ``--api-sock`` and the files the API names are resolved below this directory,
  as if the process were chrooted there.

Guests. By default ``InstanceStart`` starts a stand-in process
(:mod:`tests.fcdouble.guest`) that lives as long as a guest would and turns
SendCtrlAltDel into a clean exit. With ``FCDOUBLE_BACKEND=qemu``
(:mod:`tests.fcdouble.qemu`) it boots the configured kernel, initrd, drives and
TAPs in ``qemu-system-x86_64 -M microvm`` under TCG: the serial console goes to
the double's stdout, SendCtrlAltDel presses the keys on an emulated i8042, and
the double exits 0 when the guest reboots or panics, as Firecracker does. The
test guest for it (a Debian cloud kernel, an initrd that loads the virtio
modules, and a rootfs with the product's fc-init) comes from
:func:`tests.guest.build.ensure_test_guest`; see ``tests/guest/README.md``.
"""
