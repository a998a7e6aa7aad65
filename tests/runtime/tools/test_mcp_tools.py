"""Tools from an MCP server (runtime.mcp_tools): a real MCP server built with the ``mcp`` package runs as a child
process on loopback (tests/mcp_standin.py); a turn of the real engine, with a scripted model, calls its allowed
tool over streamable HTTP and logs the call with its arguments and result. The allow-list keeps its other tool
from the model; the address guard keeps a loopback server out unless private addresses are allowed."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest
from sqlalchemy import select

from core.errors import InvalidRequest
from runtime import mcp_tools
from runtime.config import McpServer, merge_config
from runtime.http_tools import HttpToolError
from runtime.models import ToolCallRecord
from runtime.types import ToolCall
from tests.conftest import REPO
from tests.factories import add_assistant, chat, use_scripted_model, wait_until
from tests.system.stack import free_port, http_ok


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    """The shop's MCP server (a child process): its endpoint URL and its log."""
    port, log = free_port(), tmp_path_factory.mktemp("mcp") / "mcp.log"
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "tests.mcp_standin", "--port", str(port)], cwd=REPO,
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz") or child.poll() is not None
                   or b"Uvicorn running" in log.read_bytes(), 30, "the MCP server up")
        assert child.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}/mcp", log
    finally:
        child.terminate()
        child.wait(10)


def _assistant(services, url: str, tools=("order_status",)) -> str:
    mcp_tools._listings.clear()  # each test lists the server afresh
    return add_assistant(services, "shop", embedding_model="all-minilm-l6-v2", config={
        "system_prompt": "You answer the customers of Loja Azul.",
        "mcp_servers": [{"name": "shop", "url": url, "tools": list(tools), "timeout_s": 5}]})


def test_an_mcp_tool_is_called_in_a_turn_and_logged_with_its_arguments_and_result(services, mcp_server, caplog):
    url, log = mcp_server
    caplog.set_level(logging.INFO, "runtime.mcp_tools")
    services.settings.http_tools_allow_private = True  # the server listens on loopback
    aid = _assistant(services, url)
    offered = []

    def look_up(messages, tools):
        offered.extend(t["function"]["name"] for t in tools)
        return [ToolCall("call_1", "order_status", {"order_id": "AZ-1042"})]

    def answer(messages, tools):
        return f"Here is what I found: {messages[-1]['content'].split(': ', 1)[1]}."

    use_scripted_model(services).enqueue(look_up, answer)
    result = chat(services, aid, "Where is my order AZ-1042?")
    assert offered == ["order_status"]  # cancel_order is not on the allow-list
    assert result.reply == "Here is what I found: shipped on Monday by courier; arrives Thursday."
    with services.session() as session:
        (record,) = session.scalars(select(ToolCallRecord)).all()
    assert (record.name, record.arguments, record.error) == ("order_status", {"order_id": "AZ-1042"}, None)
    assert record.result == "Order AZ-1042: shipped on Monday by courier; arrives Thursday"
    assert record.duration_ms > 0
    assert "order_status AZ-1042" in log.read_text() and "cancel_order" not in log.read_text()
    # the customer's data stays in the turn's log (retention, erasure), out of the process log
    (line,) = [r.getMessage() for r in caplog.records if r.name == "runtime.mcp_tools"]
    assert line.startswith("MCP tool order_status of shop called") and "AZ-1042" not in line


def test_a_tool_off_the_allow_list_is_never_called(sqlite_services, mcp_server):
    services, (url, log) = sqlite_services, mcp_server
    services.settings.http_tools_allow_private = True
    aid = _assistant(services, url)
    use_scripted_model(services).enqueue([ToolCall("call_1", "cancel_order", {"order_id": "AZ-7"})], "Done.")
    chat(services, aid, "Cancel my order AZ-7")
    with services.session() as session:
        (record,) = session.scalars(select(ToolCallRecord)).all()
    assert record.name == "cancel_order" and "unknown tool 'cancel_order'" in record.error
    assert "cancel_order AZ-7" not in log.read_text()


def test_the_address_guard_keeps_a_loopback_mcp_server_out(sqlite_services, mcp_server, caplog):
    services, (url, _) = sqlite_services, mcp_server
    aid = _assistant(services, url)  # private addresses not allowed (the default)
    offered = []

    def reply(messages, tools):
        offered.extend(tools or [])
        return "I cannot look that up right now."

    use_scripted_model(services).enqueue(reply)
    with caplog.at_level(logging.WARNING, logger="runtime.tools.toolset"):
        chat(services, aid, "Where is my order AZ-1042?")
    assert offered == []
    assert "MCP server shop left out of this turn: refused: 127.0.0.1 is a loopback address" in caplog.text


def test_a_call_past_its_time_fails_with_a_readable_error(sqlite_services):
    services = sqlite_services
    services.settings.http_tools_allow_private = True
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = McpServer(name="slow", url=f"http://127.0.0.1:{silent.getsockname()[1]}/mcp", tools=["x"])
        with pytest.raises(HttpToolError, match="did not answer within 0.5 seconds"):
            mcp_tools.call_tool(server, "x", {}, services.settings, 0.5)


def test_mcp_tool_names_must_not_clash():
    with pytest.raises(InvalidRequest, match="MCP tool names must be unique"):
        merge_config({}, {"mcp_servers": [{"name": "a", "url": "https://a.example/mcp", "tools": ["transfer_to_human"]}]})
    with pytest.raises(InvalidRequest, match="url"):
        merge_config({}, {"mcp_servers": [{"name": "a", "url": "file:///etc/passwd", "tools": ["x"]}]})
