"""Tools for developers and first runs: the embedded servers (stack/), `whaleid demo` and `whaleid up|down`
(demo/), and the fault-injection suite `whaleid chaos` (chaos/)."""
