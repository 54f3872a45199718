"""Quota enforcement: the policy file and the pure decision core (the sidecar and client come next)."""
