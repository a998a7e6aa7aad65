"""The benchmarks behind ``atende bench``: ingest, turn, export and WhatsApp load (retrieval latency is in
``atende.evaluation.retrieval``). Standalone measurements that are no command live in ``benchmarks/``."""
