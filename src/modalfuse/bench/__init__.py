"""The benchmarks: load, soak, shadow cost and batch throughput, each behind `modalfuse bench`.

They start and drive the server from outside, as a client would, so this package sits above
`serve` and is never imported by it (nor by anything below it).
"""
