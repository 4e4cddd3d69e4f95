"""One agent session after login, as a pump and the collaborators it drives.

* :mod:`.state` — the session's data (units, expectations, prepared statements, portals);
* :mod:`.router` — sans-I/O: server frames in, the client's bytes out, matched to what was
  forwarded through the expected-response FIFO;
* :mod:`.gate` — the record gate: the durability rules (what goes upstream, and which
  answers leave, only once records are durable);
* :mod:`.desk` — the hold desk: approvals and row estimates;
* :mod:`.handlers`, :mod:`.query`, :mod:`.named` — frontend handlers (every client message
  is decided before it is forwarded); :mod:`.refusals` — how a refusal is worded and sent;
* :mod:`.inbox` — the one reader of the client; :mod:`.pump` — the pumps and the lifecycle.
"""

from policyc.proxy.session.pump import Session
from policyc.proxy.session.state import SessionClosed

__all__ = ["Session", "SessionClosed"]
