"""A catalog's `kubernetes:` blocks (on agents and tasks): checked against the Kubernetes API
models when the catalog loads, merged per run, and handed to dagster-k8s as the
`dagster-k8s/config` run tag, which `K8sRunLauncher` applies to the run's Job and Pod (and
`k8s_job_executor` to each step's).

A block has dagster-k8s's sections (`container_config`, `pod_spec_config`, ...), each written
as the Kubernetes object it configures, in camelCase or snake_case. Checking walks the
`kubernetes` client's own models, so a misspelt field or a wrong type is reported with its
path (`pod_spec_config.tolerations[0].efect`) instead of failing a run at launch.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_pipelines.catalog.loader import Catalog

#: The run tag dagster-k8s reads.
K8S_CONFIG_TAG = "dagster-k8s/config"
#: Section -> the Kubernetes model it configures (the `kubernetes` client is imported only
#: when a catalog has a block: it costs ~0.3 s).
SECTIONS: dict[str, str] = {
    "container_config": "V1Container",
    "pod_template_spec_metadata": "V1ObjectMeta",
    "pod_spec_config": "V1PodSpec",
    "job_config": "V1Job",
    "job_metadata": "V1ObjectMeta",
    "job_spec_config": "V1JobSpec",
}
_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\[str, (.+)\]$")
_PRIMITIVES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "datetime": (str,)}


def check_block(block: Mapping[str, Any]) -> dict[str, Any]:
    """The block with quantities as strings; ValueError naming every bad path."""
    if not isinstance(block, Mapping):
        raise ValueError(f"must be a mapping of {', '.join(SECTIONS)}")
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for section, value in block.items():
        model = SECTIONS.get(section)
        if model is None:
            problems.append(f"{section}: unknown section; expected one of {', '.join(SECTIONS)}")
            continue
        checked[section] = _check(value, model, section, problems)
    if problems:
        raise ValueError("; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    _build_with_dagster_k8s(checked)
    return checked


def model_problems(value: Any, model: str) -> list[str]:
    """Every path where `value` (a Kubernetes object as a dict, camelCase or snake_case) does not
    fit the `kubernetes` client's model `model` (e.g. "V1Job")."""
    problems: list[str] = []
    _check(value, model, model, problems)
    return problems


def merge(blocks: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Later blocks win for single values; mappings merge, lists (tolerations, volumes) add up."""
    merged: dict[str, Any] = {}
    for block in blocks:
        if block:
            merged = _deep_merge(merged, block)
    return merged


def run_tags(blocks: Iterable[Mapping[str, Any] | None]) -> dict[str, str]:
    """`{K8S_CONFIG_TAG: json}` for a run carrying tasks with these blocks; {} when none has one."""
    merged = merge(blocks)
    return {K8S_CONFIG_TAG: json.dumps(merged, sort_keys=True)} if merged else {}


def block_key(block: Mapping[str, Any] | None) -> str:
    """Runs are split so that the tasks of one run share one pod configuration."""
    return json.dumps(block or {}, sort_keys=True)


def _check(value: Any, type_name: str, path: str, problems: list[str]) -> Any:
    if type_name == "object":
        return value
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list")
            return value
        return [_check(item, match.group(1), f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if match := _DICT.match(type_name):
        if not isinstance(value, Mapping):
            problems.append(f"{path}: must be a mapping")
            return value
        inner = match.group(1)
        if inner == "str":  # labels, node selectors, quantities: `cpu: 1` means "1"
            return {str(k): _quantity(v, f"{path}.{k}", problems) for k, v in value.items()}
        return {k: _check(v, inner, f"{path}.{k}", problems) for k, v in value.items()}
    if type_name in _PRIMITIVES:
        allowed = _PRIMITIVES[type_name]
        if not isinstance(value, allowed) or (type_name == "int" and isinstance(value, bool)):
            problems.append(f"{path}: must be {'a string' if type_name in ('str', 'datetime') else 'an integer' if type_name == 'int' else type_name}, got {value!r}")
        return value
    import kubernetes.client

    model = getattr(kubernetes.client, type_name, None)
    if model is None:
        return value
    if not isinstance(value, Mapping):
        problems.append(f"{path}: must be a mapping ({type_name})")
        return value
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    checked = {}
    for key, item in value.items():
        attr = key if key in model.openapi_types else by_json.get(key)
        if attr is None:
            known = sorted(model.attribute_map.values())
            hint = _closest(str(key), known)
            problems.append(f"{path}.{key}: unknown field of {type_name}" + (f" (did you mean {hint!r}?)" if hint else ""))
            continue
        checked[key] = _check(item, model.openapi_types[attr], f"{path}.{key}", problems)
    return checked


def _quantity(value: Any, path: str, problems: list[str]) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append(f"{path}: must be a string or a number, got {value!r}")
        return str(value)
    return str(value)


def _closest(key: str, known: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return found[0] if found else None


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + [item for item in copy.deepcopy(value) if item not in out[key]]
        else:
            out[key] = copy.deepcopy(value)
    return out


def _build_with_dagster_k8s(block: Mapping[str, Any]) -> None:
    """The last word: dagster-k8s builds a Job from it, as its launcher will."""
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    try:
        user_config = UserDefinedDagsterK8sConfig.from_dict(block)
        job_config = DagsterK8sJobConfig(job_image="check:latest", dagster_home="/opt/dagster/dagster_home", instance_config_map="check")
        construct_dagster_k8s_job(job_config, ["true"], "dagster-run-check", user_defined_k8s_config=user_config)
    except Exception as exc:  # noqa: BLE001 - whatever dagster-k8s refuses, the catalog must say
        raise ValueError(f"dagster-k8s cannot build a Job from it: {exc}") from None


def task_block(catalog: Catalog, name: str) -> dict[str, Any]:
    """A task's pod configuration: its agent's block with the task's own merged over it."""
    task = catalog.tasks[name]
    agent = catalog.agents.get(task.agent or "")
    return merge([agent.kubernetes if agent is not None else None, task.kubernetes])
