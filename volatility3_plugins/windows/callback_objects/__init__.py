"""Building blocks of ``windows.callbackobjects``.

Small single-purpose modules so other plugins (and the unit tests) can reuse each step
without the plugin class: ``structures`` (our ISF and the layout choice), ``walk`` (bounded
LIST_ENTRY walker), ``discovery`` (the routes to callback objects), ``registrations``,
``attribution`` (owner module, symbol and section of a routine) and ``flags`` (the detection
vocabulary and classification).

Volatility imports every module below the ``-p`` folder at start-up, so nothing here may do
work at import time.
"""
