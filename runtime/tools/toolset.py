"""An assistant's tools: ``build_toolset`` assembles the built-in tools it has enabled and its HTTP
tools; ``Toolset.run`` never raises: a failure becomes a ``ToolResult`` with ``error`` set and a short
message the model can read."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from core.errors import DomainError
from core.settings import Settings
from runtime.config import TOOL_NAMES, AssistantConfig
from runtime.http_tools import HttpToolError
from runtime.mcp_tools import list_tools
from runtime.scheduling import SchedulingError
from runtime.tools.builtin import BUILTIN_TOOLS, collect_data
from runtime.tools.context import ToolContext, ToolError
from runtime.tools.http_tool import http_tool
from runtime.tools.mcp_tool import mcp_tool
from runtime.tools.schema import Tool, function_tool
from runtime.types import ToolCall, ToolResult, ToolSchema
from runtime.validators import InvalidValue

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 500
MCP_LISTING_TIMEOUT_S = 5.0  # a turn waits at most this long for a server's tool list (then listed for minutes)
# errors whose message is already meant for the model
READABLE_ERRORS = (ToolError, InvalidValue, SchedulingError, HttpToolError, DomainError)


class Toolset:
    """The tools of one assistant: schemas for the model, and a runner that never raises."""

    def __init__(self, tools: list[Tool]):
        self._tools = {t.name: t for t in tools}

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> list[ToolSchema]:
        return [t.schema() for t in self._tools.values()]

    def without(self, names: frozenset[str] | set[str]) -> Toolset:
        """The same tools but ``names``."""
        return Toolset([t for name, t in self._tools.items() if name not in names])

    def run(self, ctx: ToolContext, call: ToolCall) -> ToolResult:
        started = time.perf_counter()
        error = None
        try:
            content = self._run(ctx, call)
        except READABLE_ERRORS as exc:
            error = str(exc)[:MAX_ERROR_CHARS] or type(exc).__name__
            content = f"Error: {error}"
        except Exception as exc:
            log.exception("tool %s failed", call.name)
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            content = f"Error: the tool {call.name} failed unexpectedly ({type(exc).__name__}). Do not retry it; offer another way to help."
        duration_ms = round((time.perf_counter() - started) * 1000)
        return ToolResult(call_id=call.id, name=call.name, content=content, error=error, duration_ms=duration_ms)

    def _run(self, ctx: ToolContext, call: ToolCall) -> str:
        tool = self._tools.get(call.name)
        if tool is None:
            raise ToolError(f"unknown tool '{call.name}'; available tools: {', '.join(self._tools) or 'none'}")
        arguments = call.arguments
        if isinstance(arguments, str):  # a client that could not parse the model's JSON passes it raw
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                raise ToolError("arguments are not valid JSON") from None
        if not isinstance(arguments, dict):
            raise ToolError("arguments must be a JSON object")
        return str(tool.call(ctx, **tool.check(arguments)))


def build_toolset(config: AssistantConfig, settings: Settings | None = None) -> Toolset:
    """The assistant's enabled built-in tools (in ``TOOL_NAMES`` order), then its HTTP tools, then (given the
    ``settings`` to reach them with) the allowed tools of its MCP servers.

    The search tool is offered only when retrieval runs as a tool: with ``every_turn`` the engine has
    already searched, and small models would spend rounds searching again.
    """
    tools = []
    for name in TOOL_NAMES:
        if name not in config.tools or (name == "search_knowledge_base" and config.retrieval.mode == "every_turn"):
            continue
        if name == "collect_data":
            if config.data_fields:  # without fields the tool can do nothing: spare the prompt
                tools.append(_collect_data_tool(config))
            continue
        tools.append(function_tool(BUILTIN_TOOLS[name]))
    tools += [http_tool(tool) for tool in config.http_tools]  # names are unique (AssistantConfig checks)
    if settings is not None:
        tools += _mcp_tools(config, settings)
    return Toolset(tools)


def _mcp_tools(config: AssistantConfig, settings: Settings) -> list[Tool]:
    """The allowed tools of the assistant's MCP servers; a server that cannot be listed is left out, logged."""
    tools = []
    for server in config.mcp_servers:
        try:
            listed = list_tools(server, settings, min(server.timeout_s, MCP_LISTING_TIMEOUT_S))
        except HttpToolError as exc:
            log.warning("MCP server %s left out of this turn: %s", server.name, exc)
            continue
        tools += [mcp_tool(server, tool) for tool in listed]
    return tools


def _collect_data_tool(config: AssistantConfig) -> Tool:
    """collect_data, with the assistant's fields listed so the model can pick one."""
    tool = function_tool(collect_data)
    fields = ", ".join(
        f"{f.name} ({'one of ' + '/'.join(f.options) if f.type == 'enum' else f.type})" for f in config.data_fields
    )
    props = dict(tool.parameters["properties"])
    props["field"] = props["field"] | {"enum": [f.name for f in config.data_fields]}
    return replace(tool, description=f"{tool.description} Fields: {fields}.", parameters=tool.parameters | {"properties": props})
