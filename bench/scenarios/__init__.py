"""The scenarios, one a module, in the order ``python -m bench`` runs them.

1. ``limit``: a bare aiohttp loop, the machine's ceiling for these webhooks.
2. ``fast``: the service, the faststream relay and the naive consumer, receivers answering
   at once.
3. ``slow``: the service and the naive consumer, receivers answering after 200 ms.
4. ``latency``: publication to arrival at steady rates.
5. ``backlog``: peak memory against the backlog waiting at start-up.
7. ``scaling``: throughput against ``MAX_IN_FLIGHT`` and the number of processes.
8. ``schedule``: due deliveries worked through from Postgres (a code resumed, a breaker
   open).
(6, the naive baseline, runs inside 2 and 3.)
"""
