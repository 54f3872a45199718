"""Budgets shared by enforcer replicas: leases of headroom through ClickHouse Keeper (or ZooKeeper).

``coordination`` is the Keeper side (session and presence, departed replicas, lease nodes,
tidying); ``shared_headroom`` is the replica's side (its book of leases, spare room given
back, refusals checked again). docs/quotas.md explains the protocol and its bound.
"""
