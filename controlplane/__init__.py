"""Firework control plane: enrichment, publishing, webhook, API and dashboard."""
