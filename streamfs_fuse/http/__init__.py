"""The HTTP door: requests onto the core, the core's errors onto statuses.

:mod:`.door` holds the transport (listeners, the connection cap, who a
request is) and the Exchange, the one place bytes meet h11; route tables
are composed over it (:mod:`.native`, :mod:`.agfs`, :mod:`.metrics`).
"""
