"""Dagster sensors."""

from sensors.catalog_health import CATALOG_HEALTH_JOB, build_catalog_health_sensor

__all__ = ["CATALOG_HEALTH_JOB", "build_catalog_health_sensor"]
