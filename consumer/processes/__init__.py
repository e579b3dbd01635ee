"""``itep-webhooks run --processes N``: one supervisor and N consumer processes, one group.

supervisor.py   the parent: starts the workers, stops them together, fails them together
worker.py       a worker's side: its index in the logs, stopping with the supervisor
front.py        HTTP_PORT of the group: /metrics, /healthz, /readyz asked of every worker
exposition.py   PURE every worker's /metrics as one exposition, labelled ``worker``
"""
