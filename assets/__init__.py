"""Dagster assets: catalog tasks and the catalog itself."""

from assets.agent_tasks import build_task_group_asset
from assets.catalog import CATALOG_ASSET_KEY, build_catalog_assets

__all__ = ["CATALOG_ASSET_KEY", "build_catalog_assets", "build_task_group_asset"]
