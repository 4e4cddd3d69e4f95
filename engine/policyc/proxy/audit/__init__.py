"""The proxy's audit wing: a durable local spool drained into PostgreSQL (see :mod:`.log`)."""

from policyc.proxy.audit.events import RECOVERED_REASON, STALE_REASON
from policyc.proxy.audit.failures import AuditUnavailable, ForeignUpstream
from policyc.proxy.audit.log import AuditLog

__all__ = ["RECOVERED_REASON", "STALE_REASON", "AuditLog", "AuditUnavailable",
           "ForeignUpstream"]
