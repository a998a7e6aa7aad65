"""Review of the conversation log, all under one filter set: which conversations (``filters``), the
conversation list and a conversation's collected data (``conversations``), the dashboard's figures
(``metrics``) and the streamed CSV / JSONL export (``export``)."""
