"""The REST API of the control plane (DRF), under /api/v1/."""
