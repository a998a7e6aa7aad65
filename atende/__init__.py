"""atende: knowledge-grounded AI assistants for WhatsApp and other text channels."""

__version__ = "0.1.0"
