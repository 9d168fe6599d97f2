"""Evaluations of one output: JSON Schema, patterns, latency, tokens, and an LLM judge."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from agent_pipelines.agents.base import AgentCallError, AgentRequest, SessionState
from agent_pipelines.agents.pool import AgentPool
from agent_pipelines.catalog.model import ChecksSpec, JudgeSpec

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n```\s*$", re.DOTALL)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    details: str
    score: float | None = None


@dataclass(frozen=True)
class Judged:
    """What the checks look at: the rendered prompt, the output, and how it went."""

    key: str
    prompt: str
    output: str
    latency_ms: float
    tokens: int | None


def parse_json_output(output: str) -> Any:
    """The output as JSON, accepting a single fenced code block around it."""
    text = output.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


def local_checks(spec: ChecksSpec, judged: Judged) -> list[CheckOutcome]:
    results: list[CheckOutcome] = []
    if spec.json_schema is not None:
        try:
            jsonschema.validate(parse_json_output(judged.output), spec.json_schema)
            results.append(CheckOutcome("json_schema", True, "valid"))
        except ValueError as exc:
            results.append(CheckOutcome("json_schema", False, f"not JSON: {exc}"))
        except jsonschema.ValidationError as exc:
            results.append(CheckOutcome("json_schema", False, f"schema violation: {exc.message}"))
    if spec.must_match:
        missing = [p for p in spec.must_match if not re.search(p, judged.output)]
        results.append(CheckOutcome("must_match", not missing, f"missing {missing}" if missing else "all present"))
    if spec.must_not_match:
        found = [p for p in spec.must_not_match if re.search(p, judged.output)]
        results.append(CheckOutcome("must_not_match", not found, f"found {found}" if found else "none found"))
    if spec.max_latency is not None:
        limit = spec.max_latency * 1000.0
        results.append(
            CheckOutcome("max_latency", judged.latency_ms <= limit, f"{judged.latency_ms:.0f} ms (max {limit:.0f} ms)")
        )
    if spec.max_tokens is not None:
        tokens = judged.tokens or 0
        results.append(CheckOutcome("max_tokens", tokens <= spec.max_tokens, f"{tokens} tokens (max {spec.max_tokens})"))
    return results


def judge_prompt(spec: JudgeSpec, judged: Judged) -> str:
    return (
        "### EVALUATION REQUEST\n"
        f"Rubric:\n{spec.rubric}\n\n"
        f"Task prompt:\n<<<\n{judged.prompt}\n>>>\n\n"
        f"Output to judge:\n<<<\n{judged.output}\n>>>\n\n"
        'Answer with a JSON object only: {"score": <a number from 0 to 1>, "reason": "<one sentence>"}'
    )


async def judge_verdict(spec: JudgeSpec, pool: AgentPool, timeout_s: float, judged: Judged) -> CheckOutcome:
    """Ask the evaluator agent for a score; any failure is a failed check that says why."""
    key = f"{judged.key}:judge"
    request = AgentRequest(
        prompt=judge_prompt(spec, judged),
        idempotency_key=key,
        session=SessionState(mode="isolated", key=key),
        timeout_s=timeout_s,
        task="judge",
    )
    try:
        response = await pool.connection(spec.agent).invoke(request)
    except AgentCallError as error:
        return CheckOutcome("judge", False, f"judge call failed: {error.describe()}")
    try:
        verdict = parse_json_output(response.output)
        score = float(verdict["score"])
    except (ValueError, KeyError, TypeError) as exc:
        return CheckOutcome("judge", False, f"judge answer unreadable ({exc!r}): {response.output[:200]}")
    reason = str(verdict.get("reason", ""))[:300] if isinstance(verdict, Mapping) else ""
    return CheckOutcome("judge", score >= spec.pass_threshold, f"score {score:.2f} (threshold {spec.pass_threshold}): {reason}", score)
