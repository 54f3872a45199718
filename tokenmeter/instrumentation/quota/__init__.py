"""The app's side of quotas: asking the enforcer before a call (client, connection, leases), acting
on the answer (gate), and what the app's users see (errors, responses)."""
