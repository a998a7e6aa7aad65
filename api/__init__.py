"""FastAPI app: admin API (assistants, documents, search, chat, conversations), web widget, WhatsApp webhook."""
