"""Command groups of `agent-pipelines` that live in modules of their own."""
