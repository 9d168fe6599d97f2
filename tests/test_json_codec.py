"""The send path's JSON: orjson's speed, the standard library's results."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest

from agent_pipelines.json_codec import dumps, dumps_text, loads


def test_a_body_decodes_to_what_json_would_have_sent() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Ünïcode ✓"}], 1: "int key", "big": 2**70}
    assert json.loads(dumps(body)) == json.loads(json.dumps(body))


@pytest.mark.parametrize("text", ['{"a": 1}', '{"a": NaN}', '{"a": Infinity}', '[1, 2.5, "x"]'])
def test_an_answer_decodes_as_json_decodes_it(text: str) -> None:
    assert repr(loads(text.encode())) == repr(json.loads(text))


def test_an_answer_that_is_not_json_raises_value_error() -> None:
    with pytest.raises(ValueError):
        loads(b"<html>bad gateway</html>")


def test_stored_item_fields_hold_what_json_with_default_str_held() -> None:
    fields = {"when": dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.timezone.utc), "day": dt.date(2026, 12, 3), "price": decimal.Decimal("1.10"), "n": 2**70, "text": "ü"}
    assert json.loads(dumps_text(fields)) == json.loads(json.dumps(fields, ensure_ascii=False, default=str))
