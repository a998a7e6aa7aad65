"""Preloaded by the forkserver of ``ingest.sandbox``: importing it loads and warms every parser
once, so each parse's child process is forked warm instead of loading them itself."""
import gc

from ingest.parse import warm_up

warm_up()
gc.freeze()  # the garbage collector of each child then leaves the inherited objects (and their pages) alone
