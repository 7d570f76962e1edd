"""A Firecracker test double: the real API on a Unix socket, a stand-in guest.

Run it as ``python -m tests.fcdouble --api-sock PATH --id ID`` or through the
``firecracker`` launcher next to this file. Behaviour knobs come from the
environment so that a driver under test can start it like the real binary:

- ``FCDOUBLE_FAIL``: lines ``KEY:fault message``; the request whose KEY matches
  (a first path segment such as ``boot-source`` or ``drives``, or an action type
  such as ``InstanceStart``) fails with that message once it passes validation.
- ``FCDOUBLE_LOG``: the JSONL request log (default: ``<api-sock>.requests.jsonl``).
- ``FCDOUBLE_GUEST``: ``ignore-cad`` makes the guest ignore SendCtrlAltDel.
- ``FCDOUBLE_IGNORE_SIGTERM=1``: behave like Firecracker as PID 1 of a pid
  namespace (jailer ``--new-pid-ns``), where SIGTERM is dropped.
- ``FCDOUBLE_BIND_DELAY``: seconds to wait before binding the socket.
- ``FCDOUBLE_EXIT``: exit at once with this code, before binding.
- ``FCDOUBLE_CHROOT``: set by the ``jailer`` double (``tests.fcdouble.jailer``):
  ``--api-sock`` and the files the API names are resolved below this directory,
  as if the process were chrooted there.
"""
