"""Sending webhooks: the request, the attempt, its verdict, the schedule and the breaker."""
