"""The dashboard: server-rendered pages for operators, one module per concern.

``repositories`` (home and "Run now"), ``revisions`` (run history and detail),
``nodes`` (what the object store serves to agents); the other modules are the
pure helpers those views share.
"""
