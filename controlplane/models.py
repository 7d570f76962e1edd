"""Database models of the control plane.

None yet: published node configs live in the object store, not in the database.
"""
