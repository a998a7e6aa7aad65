"""Parse isolation benchmark: what parsing each upload in a child process (``ingest.sandbox``) costs
per document, against parsing it in the calling process as before, on real documents.

Both sides start warm (every parser loaded and warmed once) and see each document for the first time,
as a server does; the child side is the median of a few runs (each child starts from the same warm
forkserver, so nothing carries over between runs). The forkserver's own start is reported apart.
Run: ``python -m benchmarks.parse_isolation [FILE...]`` (default: ten documents of ../shared/data/docs).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from core.settings import Settings
from ingest.parse import parse_document, warm_up
from ingest.sandbox import ParseLimits, parse_isolated
from kb.detect import detect_file_type

DOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "docs"
DEFAULT_DOCS = [
    "txt/norwich-city.txt", "md/the-art-of-command-line-README-pt.md", "html/example-10k-1p.html", "csv/stanley-cups.csv",
    "eml/family-day.eml", "docx/docx-tables.docx", "pptx/sample-presentation.pptx", "xlsx/vodafone.xlsx",
    "pdf/fake-memo.pdf", "pdf/layout-parser-paper-with-table.pdf",
]


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_benchmark(paths: list[Path], repeats: int = 3) -> dict:
    """Time each document in-process (once, first sight) and in a child (median of ``repeats``)."""
    limits = ParseLimits.from_settings(Settings())
    server_start_s = _seconds(lambda: parse_isolated(b"Warm up.", "txt", limits))
    warm_up_s = _seconds(warm_up)
    rows = []
    for path in paths:
        data = path.read_bytes()
        file_type = detect_file_type(path.name, data, len(data))
        # the lambdas run at once, in this iteration
        in_process = _seconds(lambda: parse_document(data, file_type))  # noqa: B023
        child = statistics.median(_seconds(lambda: parse_isolated(data, file_type, limits))  # noqa: B023
                                  for _ in range(repeats))
        rows.append({"file": path.name, "type": file_type, "kb": round(len(data) / 1024, 1),
                     "in_process_ms": round(in_process * 1000, 1), "child_ms": round(child * 1000, 1),
                     "overhead_ms": round((child - in_process) * 1000, 1)})
    report = {
        "forkserver_start_s": round(server_start_s, 2), "in_process_warm_up_s": round(warm_up_s, 2), "documents": rows,
        "median_overhead_ms": round(statistics.median(r["overhead_ms"] for r in rows), 1),
        "total_in_process_s": round(sum(r["in_process_ms"] for r in rows) / 1000, 2),
        "total_child_s": round(sum(r["child_ms"] for r in rows) / 1000, 2),
    }
    _print(report)
    return report


def _print(report: dict) -> None:
    print(f"{'file':42} {'type':5} {'KiB':>8} {'in-process ms':>14} {'child ms':>9} {'overhead ms':>12}")
    for r in report["documents"]:
        print(f"{r['file'][:42]:42} {r['type']:5} {r['kb']:>8} {r['in_process_ms']:>14} {r['child_ms']:>9} {r['overhead_ms']:>12}")
    print(f"\nper document: median overhead {report['median_overhead_ms']} ms; all documents "
          f"{report['total_in_process_s']} s in-process -> {report['total_child_s']} s in children")
    print(f"once per process: forkserver start (import + warm-up) {report['forkserver_start_s']} s "
          f"(in-process warm-up alone {report['in_process_warm_up_s']} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[DOCS / d for d in DEFAULT_DOCS])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run_benchmark(args.paths, args.repeats)
