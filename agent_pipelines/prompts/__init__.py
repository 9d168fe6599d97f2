"""Prompt versions, evaluations and self-tuning."""
