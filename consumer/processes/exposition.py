"""PURE: the workers' expositions as one, every sample labelled with its worker.

Each worker serves its own registry in the Prometheus text format. The supervisor parses
each (prometheus-client's parser), adds ``worker="<index>"`` to every sample and renders the
lot as one exposition: each family's HELP and TYPE once, its samples from every worker under
it, families in the order they first appear.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

WORKER_LABEL: Final = "worker"


def with_worker_label(text: str, worker: str) -> list[Metric]:
    """The families of one worker's exposition, each sample labelled ``worker``.

    Raises ``ValueError`` for text that is not the Prometheus text format.
    """
    families = []
    for family in text_string_to_metric_families(text):
        labelled = Metric(family.name, family.documentation, family.type, family.unit)
        labelled.samples = [
            sample._replace(labels={**sample.labels, WORKER_LABEL: worker})
            for sample in family.samples
        ]
        families.append(labelled)
    return families


def merge_families(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name, holding the samples of every group in turn.

    A family whose type differs from the first one seen under its name (workers of
    different versions) keeps the first and leaves the other out: one name, one type.
    """
    merged: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif into.type != family.type:
                continue
            into.samples.extend(family.samples)
    return list(merged.values())


class _Families:
    """A collector of fixed families, for ``generate_latest``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of ``families``."""
    return generate_latest(_Families(families))


def merge_expositions(texts: dict[str, str]) -> bytes:
    """Worker -> its exposition, as one exposition labelled by worker."""
    return render(merge_families(with_worker_label(text, worker) for worker, text in texts.items()))
