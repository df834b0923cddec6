"""Experiment configs (get_config(variant) per experiment)."""
