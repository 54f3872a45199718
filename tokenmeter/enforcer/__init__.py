"""Quota enforcement: policy, pure decision core, usage snapshot, reservations (the sidecar and client come next)."""
