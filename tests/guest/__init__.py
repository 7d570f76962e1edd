"""The test guest: a real kernel, initrd and rootfs for the QEMU-backed double.

See ``tests/guest/README.md`` and :func:`tests.guest.build.ensure_test_guest`.
"""
