"""The dashboard: server-rendered pages for operators, one module per concern.

``repositories`` (home and "Run now"), ``revisions`` (run history and detail),
``nodes`` (the node types: what the object store serves to agents), ``hosts``
(the nodes themselves: desired against actual state, which commit runs where);
the other modules are the pure helpers those views share.
"""
