"""Benchmarks that print figures (never timed tests): `python -m benchmarks.bench_pretrain`,
`benchmarks.bench_prepare`, `benchmarks.bench_dist`, or `make bench`. See docs/performance.md."""
