"""Benchmarks: each writes result rows (JSON + CSV) and figures drawn only from those files
(DESIGN.md rule 10). ``cli.BENCHES`` lists the sub-commands of ``bsrnn bench``."""
