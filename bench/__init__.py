"""The benchmark program: ``python -m bench`` (``make bench``); see ``bench/__main__.py``.

Modules, by the run's way through them: ``plan`` (sizes), ``stack`` (topics, tracking codes,
relay processes), ``procs`` (CPU and memory of a process tree), ``receiver`` (the partner
endpoints, own process), ``events`` (the events and their producers), ``workload`` (one
scenario's world and its relay runs), ``window`` (what a run is measured over),
``ceiling`` / ``naive`` / ``relay_faststream`` (the reference relays, own processes),
``scenarios/`` (one a module), ``results`` and ``report`` (tables, BENCHMARKS.md),
``machine`` (what ran it).
"""
