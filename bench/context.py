"""What every scenario is handed: the plan, the settings, the broker, where logs go."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.plan import Plan
from bench.results import Results
from bench.stack import Kafka
from consumer.settings import Settings


@dataclass
class Context:
    plan: Plan
    settings: Settings  # the service's settings as the environment gives them (defaults)
    kafka: Kafka
    log_dir: Path
    processes_flag: bool  # ``python -m consumer run --processes N`` exists
    results: Results = field(default_factory=Results)
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        print(f"  [{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    @property
    def dsn(self) -> str:
        return self.settings.database_url
