"""Chat model clients: the text tool-call parser, the real ``openai`` client against a local stand-in
of an OpenAI-compatible server, the scripted fake, and the real local model (marked ``llm``)."""
from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runtime.llm import (
    ChatModelError,
    OpenAICompatibleChatModel,
    ScriptedChatModel,
    sanitize_messages,
    text_tool_calls,
)
from runtime.local_llm import LlamaCppServer, default_model_path
from runtime.types import ChatResponse, ToolCall, Usage

TOOLS = {"get_weather", "search_knowledge_base"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# --- text_tool_calls --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected_text, expected_calls",
    [
        pytest.param(
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Recife"}}</tool_call>',
            "", [("get_weather", {"city": "Recife"})], id="hermes",
        ),
        pytest.param(
            '<tool_call>\n  {"name": "get_weather",\n   "arguments": {"city": "Recife"}}\n\n</tool_call>\n',
            "", [("get_weather", {"city": "Recife"})], id="hermes-whitespace",
        ),
        pytest.param(
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Recife"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "search_knowledge_base", "arguments": {"query": "prices"}}\n</tool_call>',
            "", [("get_weather", {"city": "Recife"}), ("search_knowledge_base", {"query": "prices"})],
            id="hermes-multiple",
        ),
        pytest.param(
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Natal"}}',
            "", [("get_weather", {"city": "Natal"})], id="hermes-unclosed",
        ),
        pytest.param(
            '<tool_call>\n```json\n{"name": "get_weather", "arguments": {"city": "Natal"}}\n```\n</tool_call>',
            "", [("get_weather", {"city": "Natal"})], id="hermes-fenced-inside",
        ),
        pytest.param(
            '<tool_call>{"name": "search_knowledge_base"}</tool_call>',
            "", [("search_knowledge_base", {})], id="hermes-no-arguments",
        ),
        pytest.param(
            '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Recife"\n  }\n}\n```',
            "", [("get_weather", {"city": "Recife"})], id="fenced-json",  # what Qwen 1.5B emits here
        ),
        pytest.param(
            '```\n{"name": "get_weather", "parameters": {"city": "Recife"}}\n```',
            "", [("get_weather", {"city": "Recife"})], id="fenced-no-language-parameters",
        ),
        pytest.param(
            '{"name": "get_weather", "arguments": {"city": "Recife"}}',
            "", [("get_weather", {"city": "Recife"})], id="bare-object",
        ),
        pytest.param(
            '[{"name": "get_weather", "arguments": {"city": "Recife"}}, '
            '{"name": "get_weather", "arguments": {"city": "Olinda"}}]',
            "", [("get_weather", {"city": "Recife"}), ("get_weather", {"city": "Olinda"})], id="bare-list",
        ),
        pytest.param(
            '{{"name": "get_weather", "arguments": "{\\"city\\": \\"Recife\\"}"}}',
            "", [("get_weather", {"city": "Recife"})], id="qwen-doubled-braces-string-arguments",
        ),
        pytest.param(
            '{{"name": "get_weather", "arguments": {"city": "Recife"}}}',
            "", [("get_weather", {"city": "Recife"})], id="qwen-doubled-braces",  # Qwen 1.5B with a system prompt
        ),
        pytest.param(
            '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Recife\\"}"}}',
            "", [("get_weather", {"city": "Recife"})], id="openai-shape",
        ),
        pytest.param(
            'Let me check that for you.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Recife"}}\n'
            "</tool_call>",
            "Let me check that for you.", [("get_weather", {"city": "Recife"})], id="prose-then-hermes",
        ),
        pytest.param(
            'Checking now: {"name": "get_weather", "arguments": {"city": "Recife"}} One moment.',
            "Checking now:  One moment.", [("get_weather", {"city": "Recife"})], id="prose-around-bare",
        ),
        pytest.param(
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Recife"}}</tool_call>\n'
            '```json\n{"name": "search_knowledge_base", "arguments": {"query": "x"}}\n```',
            "", [("get_weather", {"city": "Recife"}), ("search_knowledge_base", {"query": "x"})], id="mixed-forms",
        ),
    ],
)
def test_text_tool_calls_parses(content, expected_text, expected_calls):
    text, calls = text_tool_calls(content, TOOLS)
    assert text == expected_text
    assert [(c.name, c.arguments) for c in calls] == expected_calls
    assert [c.id for c in calls] == [f"call_{i}" for i in range(len(expected_calls))]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("Recife is sunny today. Anything else?", id="plain-prose"),
        pytest.param('<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>', id="unknown-hermes"),
        pytest.param('{"name": "delete_everything", "arguments": {}}', id="unknown-bare"),
        pytest.param(
            '[{"name": "get_weather", "arguments": {}}, {"name": "delete_everything", "arguments": {}}]',
            id="list-with-unknown",
        ),
        pytest.param('<tool_call>{"name": "get_weather", "arguments": {"city": "Rec</tool_call>', id="malformed-hermes"),
        pytest.param('```json\n{"name": "get_weather", "arguments": {city: Recife}}\n```', id="malformed-fenced"),
        pytest.param('{"name": "get_weather"}', id="bare-without-arguments"),
        pytest.param('Prices: {"plan": "basic", "price": 10} and [1, 2, 3].', id="other-json"),
        pytest.param("```python\nprint({'name': 'get_weather'})\n```", id="code-fence"),
        pytest.param("Use {braces} freely { and [brackets", id="stray-braces"),
    ],
)
def test_text_tool_calls_leaves_other_text_alone(content):
    assert text_tool_calls(content, TOOLS) == (content, [])


def test_text_tool_calls_keeps_invalid_argument_text_raw():
    _, calls = text_tool_calls('{"name": "get_weather", "arguments": "city=Recife"}', TOOLS)
    assert calls == [ToolCall("call_0", "get_weather", {"_raw": "city=Recife"})]


def test_text_tool_calls_without_offered_tools_finds_nothing():
    content = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    assert text_tool_calls(content, set()) == (content, [])


# --- message sanitizing ---------------------------------------------------------------------------


def test_sanitize_messages_sends_openai_format():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [ToolCall("call_0", "get_weather", {"city": "Recife"})]},
        {"role": "tool", "tool_call_id": "call_0", "content": {"temp": 31}},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    sent = sanitize_messages(messages)
    assert sent[1] == {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "call_0", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Recife"}'}}],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 31}'}
    assert sent[3] == {"role": "assistant", "content": ""}
    assert messages[1]["content"] is None  # the caller's messages are not modified


# --- the openai client against a local stand-in server --------------------------------------------


class FakeOpenAIServer:
    """A stdlib HTTP server on loopback answering /v1/chat/completions with canned replies."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.replies: deque[tuple[int, dict | str, float]] = deque()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "json": json.loads(body)})
                status, payload, delay = server.replies.popleft() if server.replies else (500, "no canned reply", 0)
                time.sleep(delay)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json" if isinstance(payload, dict) else "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("retry-after-ms", "10")  # keeps the client's retry back-off short
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def reply(self, payload: dict | str, status: int = 200, delay: float = 0.0) -> None:
        self.replies.append((status, payload, delay))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def completion(content=None, tool_calls=None, prompt_tokens=12, completion_tokens=5, model="fake-model") -> dict:
    """A chat.completion body as an OpenAI-compatible server returns it."""
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{
            "index": 0, "finish_reason": "tool_calls" if tool_calls else "stop",
            "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }  # fmt: skip


@pytest.fixture
def fake_server():
    server = FakeOpenAIServer()
    yield server
    server.close()


def chat_model(server: FakeOpenAIServer, **kwargs) -> OpenAICompatibleChatModel:
    return OpenAICompatibleChatModel(server.base_url, "test-key", "fake-model", **kwargs)


def test_plain_reply_with_usage(fake_server):
    fake_server.reply(completion("Olá! Como posso ajudar?", prompt_tokens=21, completion_tokens=6, model="served-x"))
    response = chat_model(fake_server, name="fake").complete(
        [{"role": "user", "content": "Oi"}], temperature=0.1, max_tokens=64, timeout=5
    )
    assert response == ChatResponse("Olá! Como posso ajudar?", [], Usage(21, 6), "served-x")
    sent = fake_server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"]["model"] == "fake-model"
    assert sent["json"]["temperature"] == 0.1 and sent["json"]["max_tokens"] == 64
    assert "tools" not in sent["json"]


def test_structured_tool_calls_and_request_payload(fake_server):
    fake_server.reply(completion(None, tool_calls=[
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Recife"}'}},
        {"id": "call_def", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": '}},
    ]))  # fmt: skip
    messages = [
        {"role": "user", "content": "Weather in Recife?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Natal"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Rainy, 25 C"},
    ]  # fmt: skip
    response = chat_model(fake_server).complete(messages, [WEATHER_TOOL], timeout=5)

    assert response.content == ""
    assert response.tool_calls == [
        ToolCall("call_abc", "get_weather", {"city": "Recife"}),
        ToolCall("call_def", "get_weather", {"_raw": '{"city": '}),  # the caller can report the bad JSON back
    ]
    sent = fake_server.requests[0]["json"]
    assert sent["tools"] == [WEATHER_TOOL]
    assistant = sent["messages"][1]
    assert assistant["content"] == ""  # not null: llama.cpp's server answers 500 on null
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Natal"}'}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "Rainy, 25 C"}


def test_hermes_text_tool_call_is_parsed(fake_server):
    text = 'Vou verificar.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Recife"}}\n</tool_call>'
    fake_server.reply(completion(text))
    response = chat_model(fake_server).complete([{"role": "user", "content": "Clima?"}], [WEATHER_TOOL])
    assert response.content == "Vou verificar."
    assert response.tool_calls == [ToolCall("call_0", "get_weather", {"city": "Recife"})]


def test_text_is_not_parsed_when_no_tools_were_offered(fake_server):
    text = '{"name": "get_weather", "arguments": {"city": "Recife"}}'
    fake_server.reply(completion(text))
    response = chat_model(fake_server).complete([{"role": "user", "content": "JSON please"}])
    assert (response.content, response.tool_calls) == (text, [])


def test_http_error_becomes_chat_model_error(fake_server):
    fake_server.reply({"error": {"message": "Internal Server Error: boom"}}, status=500)
    with pytest.raises(ChatModelError, match=r"HTTP 500: .*boom"):
        chat_model(fake_server, max_retries=0).complete([{"role": "user", "content": "hi"}])
    assert len(fake_server.requests) == 1


def test_server_errors_are_retried(fake_server):
    fake_server.reply("overloaded", status=503)
    fake_server.reply(completion("ok"))
    response = chat_model(fake_server, max_retries=1).complete([{"role": "user", "content": "hi"}])
    assert response.content == "ok"
    assert len(fake_server.requests) == 2


def test_connection_refused_becomes_chat_model_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAICompatibleChatModel(f"http://127.0.0.1:{port}/v1", "k", "m", max_retries=0)
    with pytest.raises(ChatModelError, match=rf"127\.0\.0\.1:{port}.*connection failed"):
        model.complete([{"role": "user", "content": "hi"}], timeout=5)


def test_timeout_becomes_chat_model_error(fake_server):
    fake_server.reply(completion("late"), delay=2.0)
    with pytest.raises(ChatModelError, match="timed out"):
        chat_model(fake_server, max_retries=0).complete([{"role": "user", "content": "hi"}], timeout=0.3)


def test_a_timed_out_request_is_not_retried_past_the_deadline(fake_server):
    fake_server.reply(completion("late"), delay=1.5)
    fake_server.reply(completion("late again"), delay=1.5)
    with pytest.raises(ChatModelError, match="timed out"):
        chat_model(fake_server, max_retries=2).complete([{"role": "user", "content": "hi"}], timeout=0.3)
    assert len(fake_server.requests) == 1


def test_no_retry_when_too_little_of_the_deadline_is_left(fake_server):
    fake_server.reply("overloaded", status=503)
    fake_server.reply(completion("ok"))
    with pytest.raises(ChatModelError, match="HTTP 503"):
        chat_model(fake_server, max_retries=2).complete([{"role": "user", "content": "hi"}], timeout=1.2)
    assert len(fake_server.requests) == 1


def test_client_errors_are_not_retried(fake_server):
    fake_server.reply({"error": {"message": "bad request"}}, status=400)
    with pytest.raises(ChatModelError, match="HTTP 400"):
        chat_model(fake_server, max_retries=2).complete([{"role": "user", "content": "hi"}])
    assert len(fake_server.requests) == 1


# --- ScriptedChatModel ----------------------------------------------------------------------------


def test_scripted_model_replays_script_and_records_requests():
    model = ScriptedChatModel().enqueue(
        [ToolCall("call_0", "get_weather", {"city": "Recife"})],
        "It is sunny in Recife.",
        ChatResponse("custom", usage=Usage(100, 1), model="other"),
    )
    messages = [{"role": "user", "content": "Weather in Recife please"}]

    first = model.complete(messages, [WEATHER_TOOL], max_tokens=32)
    assert first.tool_calls == [ToolCall("call_0", "get_weather", {"city": "Recife"})]
    assert first.content == "" and first.model == "scripted"
    assert first.usage == Usage(4, 3)  # words: prompt 4; "get_weather" + '{"city": "Recife"}'

    second = model.complete(messages)
    assert second == ChatResponse("It is sunny in Recife.", [], Usage(4, 5), "scripted")
    assert model.complete(messages).usage == Usage(100, 1)  # explicit usage is kept

    assert len(model.requests) == 3 and model.remaining == 0
    assert model.requests[0].tools == [WEATHER_TOOL]
    assert model.requests[0].kwargs == {"temperature": 0.2, "max_tokens": 32, "timeout": 120.0}
    messages.append({"role": "assistant", "content": "changed later"})
    assert len(model.requests[0].messages) == 1  # recorded as sent


def test_scripted_model_callable_reply_sees_the_prompt():
    model = ScriptedChatModel("echo").enqueue(lambda messages, tools: f"you said: {messages[-1]['content']}")
    response = model.complete([{"role": "user", "content": "ping"}])
    assert response.content == "you said: ping" and response.model == "echo"


def test_scripted_model_exhausted_script_fails_clearly():
    model = ScriptedChatModel().enqueue("only one")
    model.complete([{"role": "user", "content": "first"}])
    with pytest.raises(AssertionError, match=r"script exhausted after 1 replies.*'second'"):
        model.complete([{"role": "user", "content": "second"}])


def test_scripted_model_rejects_unscriptable_replies():
    with pytest.raises(TypeError):
        ScriptedChatModel().enqueue(42)
    with pytest.raises(TypeError):
        ScriptedChatModel().enqueue(["not a ToolCall"])


# --- the real local model (scripts/setup_llm.sh) --------------------------------------------------

MODEL_PATH = default_model_path()
requires_local_llm = [
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp is not installed (run scripts/setup_llm.sh)"
    ),
    pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"model file {MODEL_PATH} is absent (run scripts/setup_llm.sh)"),
]


def local_llm(test):
    for mark in requires_local_llm:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def local_model():
    """The embedded llama.cpp server with Qwen 1.5B, started once for this module."""
    with LlamaCppServer(MODEL_PATH, n_threads=2, n_ctx=2048) as server:
        yield OpenAICompatibleChatModel(server.base_url, "local", server.model_id or "local", name="local")


@local_llm
def test_local_model_plain_reply(local_model):
    response = local_model.complete(
        [{"role": "user", "content": "What is the capital of Brazil? One short sentence."}], temperature=0, max_tokens=24
    )
    assert response.content.strip()
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.model


@local_llm
def test_local_model_calls_tool(local_model):
    response = local_model.complete(
        [{"role": "user", "content": "What's the weather in Recife? Use the tool."}],
        [WEATHER_TOOL], temperature=0, max_tokens=64,
    )  # fmt: skip
    assert [c.name for c in response.tool_calls] == ["get_weather"], response
    assert "Recife" in str(response.tool_calls[0].arguments.get("city")), response


@local_llm
def test_local_model_answers_from_tool_result(local_model):
    messages = [
        {"role": "user", "content": "What's the weather in Recife? Use the tool."},
        {"role": "assistant", "content": None, "tool_calls": [ToolCall("call_0", "get_weather", {"city": "Recife"})]},
        {"role": "tool", "tool_call_id": "call_0", "content": "Sunny, 31 C"},
    ]
    # Tools are not offered again: with them, Qwen 1.5B repeats the call instead of answering.
    response = local_model.complete(messages, temperature=0, max_tokens=48)
    assert "31" in response.content, response
    assert response.tool_calls == []
