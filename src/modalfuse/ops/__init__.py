"""Operations: what combines monitoring, training and tracking into one run, such as a retrain
decided by drift or live performance.

A layer above `training`, `monitor`, `scale` and `eda` (it may use them all) and below the CLI,
which wraps each operation in a thin command. Serving never imports it: an operation acts on a
running server only through its HTTP API.
"""
