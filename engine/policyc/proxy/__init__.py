"""The policyc proxy: agents speak the PostgreSQL wire protocol to it, it decides and audits."""
