"""The ground every other package stands on: settings, the relational store's helpers, the error base, signing.

Imports nothing of ours (an import-linter contract in pyproject.toml keeps it so).
"""
