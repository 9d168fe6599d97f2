"""Alembic migrations of agent_pipelines' own tables (version table `agent_pipelines_alembic_version`)."""
