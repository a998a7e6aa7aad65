"""An MCP server's allowed tools as the assistant's tools: the model fills the input schema the server lists; the
call goes through ``runtime.mcp_tools`` within the server's timeout and the turn's deadline."""
from __future__ import annotations

from runtime.config import McpServer
from runtime.mcp_tools import McpTool, call_tool
from runtime.tools.context import ToolContext, ToolError
from runtime.tools.schema import Tool, schema_arguments


def mcp_tool(server: McpServer, listed: McpTool) -> Tool:
    """The tool ``listed`` of ``server``, as the model sees it and as the turn runs it."""
    schema = listed.input_schema
    parameters = schema if schema.get("type") == "object" else {"type": "object", "properties": {}}
    arguments = schema_arguments(listed.name, parameters)

    def call(ctx: ToolContext, **kwargs) -> str:
        seconds = min(server.timeout_s, ctx.remaining_s())
        if seconds <= 0:
            raise ToolError("no time is left in this turn to call the service")
        return call_tool(server, listed.name, kwargs, ctx.services.settings, seconds)

    return Tool(listed.name, listed.description or f"{listed.name} ({server.name})", parameters, arguments, call)
