"""FastAPI app: admin API (assistants, documents, search); webhook, review and widget come later."""
