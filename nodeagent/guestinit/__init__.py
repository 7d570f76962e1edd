"""The guest's init, ``fc-init``: a POSIX shell script shipped as package data.

:mod:`nodeagent.imagetool` installs it at ``/sbin/fc-init`` in a root drive; the
default service kernel arguments boot it with ``init=/sbin/fc-init``. What it does
and the command line it reads are described in ``docs/images.md``.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

FC_INIT_NAME = "fc-init"


def fc_init_path() -> Path:
    """The path of the packaged ``fc-init`` script on this host."""
    resource = files(__name__).joinpath(FC_INIT_NAME)
    # A regular install keeps package data as plain files; as_file only makes a
    # temporary copy for zipped installs, which this package never is.
    with as_file(resource) as path:
        return Path(path)
