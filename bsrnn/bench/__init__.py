"""Benchmarks: each writes result rows (JSON + CSV) and figures drawn only from those files
(docs/architecture.md §7). ``cli.BENCHES`` lists the sub-commands of ``bsrnn bench``."""
