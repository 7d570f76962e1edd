"""The operator forms of the node pages, and who gets to see them.

Kept apart from the views so that both the node pages
(:mod:`controlplane.dashboard.hosts`) and the actions behind the forms
(:mod:`controlplane.dashboard.hostadmin`) can use them.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from controlplane.api.nodeconfigs import NODE_TYPE_PATTERN
from controlplane.api.nodeserializers import MAX_LABELS
from controlplane.dashboard.access import is_operator
from controlplane.models import Node

_NODE_TYPE = re.compile(NODE_TYPE_PATTERN)
_SEPARATORS = re.compile(r"[\s,]+")


def parse_labels(text: str) -> list[str]:
    """Node types from ``text``, separated by commas or spaces, in order, once each.

    Raises ``ValidationError`` naming every value that is not a node type.
    """
    labels = list(dict.fromkeys(part for part in _SEPARATORS.split(text) if part))
    bad = [label for label in labels if _NODE_TYPE.fullmatch(label) is None]
    if bad:
        names = ", ".join(repr(label) for label in bad)
        raise forms.ValidationError(
            f"not a node type: {names} (lowercase letters, digits, '.' and '-')"
        )
    if len(labels) > MAX_LABELS:
        raise forms.ValidationError(f"at most {MAX_LABELS} node types")
    return labels


class NodeForm(forms.ModelForm[Node]):
    """A new node: its name (a DNS label, unique) and its node types."""

    labels = forms.CharField(
        required=False,
        label="Node types",
        help_text="Separated by commas or spaces, e.g. general-purpose, edge.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    class Meta:
        model = Node
        fields = ["name", "labels"]
        help_texts = {"name": "A DNS label: lowercase letters, digits and '-'."}
        error_messages = {
            "name": {"unique": "A node with this name already exists."},
        }

    def clean_labels(self) -> list[str]:
        return parse_labels(self.cleaned_data.get("labels") or "")


def operator_only(request: HttpRequest) -> None:
    """``PermissionDenied`` (403) unless ``request`` comes from an operator."""
    if not is_operator(request.user):
        raise PermissionDenied("Only operators can manage nodes.")


def admin_context(request: HttpRequest, form: NodeForm | None = None) -> dict[str, Any]:
    """What the node pages need for their operator forms."""
    can_manage = is_operator(request.user)
    if not can_manage:
        return {"can_manage": False}
    return {"can_manage": True, "node_form": form or NodeForm()}
