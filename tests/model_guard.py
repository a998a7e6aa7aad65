"""A pytest plugin (loaded by conftest.py): a test not marked ``@pytest.mark.llm`` that reaches a real chat
model fails, with a message naming the test and what it reached.

A real chat model is the embedded llama.cpp model (``ChatModelProvider`` without ``llm_base_url``, or a
``LlamaCppServer`` running ``llama_cpp.server``) or an OpenAI-compatible endpoint that this test run does not
serve itself. A stand-in of the tests is served by the pytest process (a thread, like test_llm's
``FakeOpenAIServer``) or by one of its child processes (``tests/llm_standin.py``, ``SlowLLMStandIn``).

The three boundaries are wrapped for the whole run. The wrapper raises :class:`RealModelReached`, a
``pytest.fail`` outcome and so a ``BaseException``: the runtime's ``except Exception`` (an error turn, the app's
warm-up) does not catch it. Code that swallows it anyway still fails its test, after the test's call or
teardown, since every reach is also recorded on the test item.
"""
from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

import psutil
import pytest

from runtime.llm import OpenAICompatibleChatModel
from runtime.llm_provider import ChatModelProvider
from runtime.local_llm import LlamaCppServer

_PATCH = pytest.StashKey[pytest.MonkeyPatch]()
_REACHED = pytest.StashKey[list[str]]()
_STAND_INS = pytest.StashKey[set[str]]()  # endpoints found served by this run, not looked up again
_running: list[pytest.Item] = []  # the test running now; a stack, as a pytest run in process nests in a test


class RealModelReached(pytest.fail.Exception):
    """A test not marked ``llm`` reached a real chat model."""


def _reached(what: str) -> None:
    """Let a test marked ``llm`` through; record the reach and raise for any other test."""
    __tracebackhide__ = True
    item = _running[-1] if _running else None
    if item is not None and item.get_closest_marker("llm") is not None:
        return
    if item is not None:
        item.stash.setdefault(_REACHED, []).append(what)
    raise RealModelReached(_message(item.nodeid if item else "code outside any test", [what]))


def _message(test: str, reached: list[str]) -> str:
    return (f"{test} is not marked @pytest.mark.llm but reached a real chat model: {'; '.join(dict.fromkeys(reached))}. "
            "Give it a scripted model (the scripted_model fixture) or mark it llm.")


def _real_endpoint(base_url: str | None) -> bool:
    """Whether ``base_url`` is a chat model this run does not serve (refused connections reach nothing)."""
    if not base_url:
        return True  # the openai client's default: api.openai.com
    item = _running[-1] if _running else None
    known = item.stash.setdefault(_STAND_INS, set()) if item is not None else set()
    if base_url in known:
        return False
    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return True
    if not all(ipaddress.ip_address(address).is_loopback for address in addresses):
        return True
    if port in _ports_listened_by_this_run():
        known.add(base_url)
        return False
    try:  # another process's server on this machine (a model someone runs) is no stand-in of the tests
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False  # nothing listens: the call fails with a refused connection and reaches no model
    return True


def _ports_listened_by_this_run() -> set[int]:
    me = psutil.Process()
    ports = set()
    for process in (me, *me.children(recursive=True)):
        try:
            ports |= {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a child that has just exited
            continue
    return ports


def _guarded_local_model(original):
    @functools.wraps(original)
    def _local_model(self):
        __tracebackhide__ = True
        path = self.settings.llm_model_path or "the default model file"
        _reached(f"the embedded llama.cpp model (ChatModelProvider without llm_base_url, {path})")
        return original(self)
    return _local_model


def _guarded_start(original):
    @functools.wraps(original)
    def start(self):
        __tracebackhide__ = True
        if not self.module.startswith("tests."):  # tests.llm_standin is the tests' own stand-in
            _reached(f"the local model server ({self.module} on {self.model_path})")
        return original(self)
    return start


def _guarded_complete(original):
    @functools.wraps(original)
    def complete(self, messages, tools=None, **kwargs):
        __tracebackhide__ = True
        if _real_endpoint(self.base_url):
            _reached(f"the OpenAI-compatible endpoint {self.base_url or 'https://api.openai.com/v1'} (model {self.model})")
        return original(self, messages, tools, **kwargs)
    return complete


def pytest_configure(config: pytest.Config) -> None:
    patch = pytest.MonkeyPatch()
    patch.setattr(ChatModelProvider, "_local_model", _guarded_local_model(ChatModelProvider._local_model))
    patch.setattr(LlamaCppServer, "start", _guarded_start(LlamaCppServer.start))
    patch.setattr(OpenAICompatibleChatModel, "complete", _guarded_complete(OpenAICompatibleChatModel.complete))
    config.stash[_PATCH] = patch


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PATCH in config.stash:
        config.stash[_PATCH].undo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _failing_if_swallowed(item: pytest.Item):
    """Wraps a test phase: a reach the code under test caught (so the phase went on) fails the test after it."""
    try:
        return (yield)
    except RealModelReached:
        item.stash[_REACHED] = []  # reported by its own traceback
        raise
    finally:
        reached, item.stash[_REACHED] = item.stash.get(_REACHED, []), []
        if reached:
            raise RealModelReached(_message(item.nodeid, reached), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _failing_if_swallowed(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _failing_if_swallowed(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    return (yield from _failing_if_swallowed(item))
