"""Metrics under the paper's protocol."""
