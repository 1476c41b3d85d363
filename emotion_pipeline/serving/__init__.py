"""Serving and scoring at scale on Ray: emotion-serve (HTTP) and emotion-batch (files), and what they share."""
