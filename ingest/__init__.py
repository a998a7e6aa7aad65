"""Ingestion: uploaded file -> detect -> parse (unstructured) -> chunk (llama-index) -> embed -> kb."""
