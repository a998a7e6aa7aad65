"""Tests of the WhatsApp benchmark's modes (atende/bench/whatsapp_load: ingest under load, replay)."""
