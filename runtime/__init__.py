"""Conversations: turn engine, tools, LLM clients, channels."""
