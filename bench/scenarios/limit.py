"""Scenario 1, the limit: what a bare aiohttp loop gets through on this machine.

The same receivers as scenario 2 (one process, one port per code, answering at once), the
same signed form bodies, ``MAX_IN_FLIGHT_PER_HOST`` (100) workers spread over the 20
origins, no Kafka, no Postgres. More workers do not raise the ceiling: 1,000 (the service's
``MAX_IN_FLIGHT``) measured 40% lower on the 2-core machine, since the receivers and the
client then juggle ten times the connections for the same two cores. The POSTing runs in its
own process (``bench.ceiling``), which reports the CPU it used while POSTing.

With ``client="sender"`` the same loop POSTs through the service's own ``WebhookSender``
instead: not the reference of any ratio, but the floor of the client the service uses.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from bench.context import Context
from bench.receiver import ReceiverProcess
from bench.results import Limit
from bench.stack import ROOT, new_run_id


async def run(
    ctx: Context, client: str = "aiohttp", *, delay: float = 0.0, concurrency: int | None = None
) -> Limit:
    """The loop against receivers answering after ``delay``, with ``concurrency`` workers
    (``MAX_IN_FLIGHT_PER_HOST`` unless given), at most that many per origin."""
    plan, settings = ctx.plan, ctx.settings
    per_host = settings.max_in_flight_per_host
    concurrency = concurrency or per_host
    run_id = new_run_id()
    receiver = ReceiverProcess(plan.codes, delay)
    slow = f", receivers answering after {delay * 1000:.0f} ms" if delay else ""
    ctx.say(
        f"limit ({client}): {plan.limit_requests:,} POSTs, {concurrency} workers, "
        f"{per_host} per origin{slow}"
    )
    await receiver.start(ctx.log_dir / f"limit-{run_id}-receiver.log")
    try:
        with (ctx.log_dir / f"limit-{run_id}-ceiling.log").open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.ceiling",
                "--urls",
                ",".join(receiver.urls),
                "--count",
                str(plan.limit_requests),
                "--tests",
                str(plan.tests),
                "--concurrency",
                str(concurrency),
                "--per-host",
                str(per_host),
                "--client",
                client,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
            out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"bench.ceiling failed ({process.returncode}); see {log_file.name}")
        received = (await receiver.stats()).count
    finally:
        await receiver.stop()
    doc = orjson.loads(out)
    if doc["failures"] or received != plan.limit_requests:
        raise RuntimeError(f"limit: {doc['failures']} failed POSTs, {received:,} received")
    limit = Limit(
        requests=int(doc["requests"]),
        seconds=float(doc["seconds"]),
        cpu_seconds=float(doc["cpu"]),
        concurrency=concurrency,
        per_host=per_host,
        client=client,
        delay=delay,
    )
    ctx.say(f"limit ({client}): {limit.rate:,.0f} requests/s, {limit.cpu_ms:.3f} ms CPU each")
    return limit
