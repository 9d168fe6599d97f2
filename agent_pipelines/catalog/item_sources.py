"""A batch task's `items:`: exactly one place its rows come from.

`path` (a file) or `glob` (files) relative to the YAML file, `sql` (a query on the database
whose URL is in the environment variable `url_env`), `http` (a paginated JSON API), `from_task`
(another batch task's results) or `from_output` (a regular task's latest output, a JSON list).
Secrets never live in the catalog: the database URL, header values and secret query parameters
are named here by environment variable and read when a run starts.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent_pipelines.catalog.durations import parse_duration
from agent_pipelines.catalog.spec import ENV_VAR_RE, NAME_RE, Spec

Duration = Annotated[float, BeforeValidator(parse_duration)]
EnvVarName = Annotated[str, Field(pattern=ENV_VAR_RE)]
TaskName = Annotated[str, Field(pattern=NAME_RE)]

#: The fields of `items:` that name a source, in the order error messages list them.
SOURCE_FIELDS = ("path", "glob", "sql", "http", "from_task", "from_output")
#: Query parameters whose literal value is a secret (as for notification channels).
_SECRET_PARAM = re.compile(r"(token|secret|pass|password|key|apikey|api_key|signature|sig|auth)$", re.IGNORECASE)
_BIND_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = r"^[^.\s]+(\.[^.\s]+)*$"


class CursorPagingSpec(Spec):
    """Each response names the next page's cursor; it goes back in a query parameter."""

    param: str = Field(default="cursor", min_length=1, description="query parameter that carries the cursor")
    field: str = Field(
        default="next_cursor", pattern=_DOTTED, description="dotted path to the next cursor in the response"
    )


class PagePagingSpec(Spec):
    """Numbered pages: `param` counts up from `start` until a page comes back empty."""

    param: str = Field(default="page", min_length=1)
    start: int = Field(default=1, ge=0)
    size_param: str | None = Field(default=None, min_length=1, description="query parameter for the page size")
    size: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _size_together(self) -> PagePagingSpec:
        if (self.size_param is None) != (self.size is None):
            raise ValueError("set `size_param` and `size` together (e.g. {size_param: per_page, size: 100})")
        return self


class PaginationSpec(Spec):
    """How to reach the next page: a cursor, a page number or the `Link: <...>; rel="next"` header."""

    cursor: CursorPagingSpec | None = None
    page: PagePagingSpec | None = None
    link_header: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> PaginationSpec:
        chosen = [name for name in ("cursor", "page", "link_header") if getattr(self, name)]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of `cursor: {param, field}`, `page: {param, start, size_param, size}` "
                "and `link_header: true`" + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self

    @property
    def kind(self) -> str:
        return "cursor" if self.cursor else "page" if self.page else "link_header"


class HttpItemsSpec(Spec):
    """A JSON API read page by page with GET; 429 and 5xx answers are retried with back-off."""

    url: str
    items_field: str | None = Field(
        default=None, pattern=_DOTTED, description="dotted path to the list in each response (default: the response)"
    )
    params: dict[str, str | int | float | bool] = Field(default_factory=dict, description="query parameters")
    params_env: dict[str, EnvVarName] = Field(
        default_factory=dict, description="query parameters whose value is read from an environment variable"
    )
    headers_env: dict[str, EnvVarName] = Field(
        default_factory=dict, description="request headers whose value is read from an environment variable"
    )
    pagination: PaginationSpec | None = Field(default=None, description="none: a single request")
    timeout: Duration = Field(default=30.0, gt=0, description="per request")
    retries: int = Field(default=3, ge=0, le=10, description="retries of a request answered 429, 5xx or not at all")

    @field_validator("url")
    @classmethod
    def _no_inline_secret(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        parts = urlsplit(value)
        if parts.password:
            raise ValueError("the URL holds a password: send credentials with `headers_env` instead")
        for key, param in parse_qsl(parts.query, keep_blank_values=True):
            if _SECRET_PARAM.search(key) and param:
                raise ValueError(f"query parameter {key!r} looks like a secret: move it to `params_env`")
        return value

    @field_validator("params")
    @classmethod
    def _no_secret_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if _SECRET_PARAM.search(key):
                raise ValueError(f"query parameter {key!r} looks like a secret: move it to `params_env`")
        return value


class ItemsSpec(Spec):
    """The rows of a batch task. Exactly one source field; `id_column` names the field whose
    value is an item's id, which must not change between runs (a re-run resumes by id)."""

    path: str | None = Field(default=None, description="a CSV, Parquet or JSONL file, relative to the YAML file")
    glob: str | None = Field(
        default=None, description="files matching this pattern (relative to the YAML file; `**` recurses), in sorted order"
    )
    sql: str | None = Field(default=None, min_length=1, description="a query whose rows are the items; `:name` binds `params`")
    url_env: EnvVarName | None = Field(
        default=None, description="with `sql`: environment variable holding the SQLAlchemy database URL"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="with `sql`: values bound to `:name` parameters")
    http: HttpItemsSpec | None = Field(default=None, description="a paginated JSON API")
    from_task: TaskName | None = Field(default=None, description="another batch task: its successful results")
    from_output: TaskName | None = Field(
        default=None, description="a regular task: its latest successful output, a JSON list"
    )
    format: Literal["csv", "parquet", "jsonl"] | None = Field(
        default=None, description="with `path` or `glob`: the file format when the suffix does not say"
    )
    id_column: str | None = Field(
        default=None,
        min_length=1,
        description="the item id: default the row number (`path`), `<file>:<row>` (`glob`), the position "
        "in the list (`from_output`); `sql` and `http` default to a column `id` and fail without one",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ItemsSpec:
        chosen = [name for name in SOURCE_FIELDS if getattr(self, name) is not None]
        if len(chosen) != 1:
            choices = ", ".join(f"`{name}`" for name in SOURCE_FIELDS)
            got = f" (got {', '.join(f'`{name}`' for name in chosen)})" if chosen else ""
            raise ValueError(f"set exactly one items source: one of {choices}{got}")
        if self.sql is not None and self.url_env is None:
            raise ValueError("`sql` needs `url_env`: the environment variable holding the database URL")
        for name in ("url_env", "params"):
            if getattr(self, name) and self.sql is None:
                raise ValueError(f"`{name}` only applies to `sql` items")
        if self.format is not None and self.path is None and self.glob is None:
            raise ValueError("`format` only applies to files (`path` or `glob`)")
        return self

    @field_validator("params")
    @classmethod
    def _bind_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _BIND_NAME.match(str(name)):
                raise ValueError(f"parameter name {name!r} is not an identifier (the query reads it as `:{name}`)")
        return value

    @property
    def kind(self) -> str:
        """The source field in use (`path`, `glob`, `sql`, `http`, `from_task` or `from_output`)."""
        return next(name for name in SOURCE_FIELDS if getattr(self, name) is not None)

    def describe(self) -> str:
        """One line for the UI: where the items come from, with no secret in it."""
        if self.path is not None:
            return self.path
        if self.glob is not None:
            return f"files matching {self.glob}"
        if self.sql is not None:
            query = " ".join(self.sql.split())
            return f"SQL on ${self.url_env}: {query if len(query) <= 120 else query[:119] + '…'}"
        if self.http is not None:
            where = f"HTTP API {self.http.url}"
            if self.http.items_field:
                where += f" (field {self.http.items_field})"
            return where + (f", {self.http.pagination.kind} pagination" if self.http.pagination else "")
        if self.from_task is not None:
            return f"results of {self.from_task}"
        return f"latest output of task {self.from_output}"
