# cython: language_level=3, embedsignature=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""kernel.Service's per-request path, compiled: the bound on the handlers that run
at once (Slots), the answer to one request (Answerer: decode, route, the handler,
encode) and a session worker's pass over what it took from the rings
(SessionAnswers). Per request the handler is the only Python frame left;
kernel/service.py keeps the failure replies and everything around serving.

In Python the same path was eight frames around the handler, ~1 µs warm per
request, more after 10 ms of idleness, when each frame runs cache-cold. Compiled,
one client's Service call takes 2.96-3.33 µs p50 against 4.15-4.30 (mkipc bench,
alternating invocations).
"""

import threading

from msgspec import MsgspecError

from kernel.errors import IPCError


cdef class Slots:
    """At most `n` handlers at once, whichever path brought their requests: a
    thread takes a slot before it runs a handler and gives it back after. A free
    slot is a counter changed under the GIL; only a thread that finds none takes
    the condition's lock and waits."""

    cdef Py_ssize_t _free
    cdef Py_ssize_t _waiting
    cdef object _cond

    def __init__(self, Py_ssize_t n):
        if n < 1:
            raise ValueError(f"slots must be at least 1, not {n}")
        self._free, self._waiting = n, 0
        self._cond = threading.Condition(threading.Lock())

    cpdef take(self):
        if self._free > 0:
            self._free -= 1
        else:
            self._wait()

    cdef _wait(self):
        with self._cond:
            self._waiting += 1   # before the last look: a give() now sees us and notifies
            try:
                while self._free == 0:
                    self._cond.wait()
                self._free -= 1
            finally:
                self._waiting -= 1

    cpdef give(self):
        self._free += 1
        if self._waiting:
            with self._cond:
                self._cond.notify()


cpdef bytearray encode_ok(encode_into, result, bytearray buf, Py_ssize_t max_payload):
    """A handler's result as an OK reply: its msgpack after the OK byte, in `buf`
    (the worker's own; buf[0] stays 0). Raises ValueError past `max_payload`. Both
    faces of kernel.Service build their replies here (the asyncio one via _ok)."""
    encode_into(result, buf, 1)
    if len(buf) > max_payload:
        raise ValueError(f"the reply of {len(buf) - 1} bytes exceeds {max_payload} bytes")
    return buf


cdef class Answerer:
    """The reply to one request, as Service built it: decode the request as one of
    the service's request types, run its handler, encode the result after the OK
    byte into `buf` (the worker's own). What does not decode goes to
    `bad_request(error)`, what the handler raises (or an oversized result) to
    `raised(error, request)`: the service's Python builds those failure replies."""

    cdef object _decode
    cdef dict _routes                # request type -> (handler, takes a context)
    cdef object _encode_into
    cdef object _context
    cdef object _bad_request
    cdef object _raised
    cdef Py_ssize_t _max_payload

    def __init__(self, decoder, routes, encoder, context, bad_request, raised,
                 Py_ssize_t max_payload):
        self._decode, self._encode_into = decoder.decode, encoder.encode_into
        self._routes = {t: (r.func, bool(r.with_ctx)) for t, r in routes.items()}
        self._context, self._bad_request, self._raised = context, bad_request, raised
        self._max_payload = max_payload

    cpdef object answer(self, msg, bytearray buf):
        cdef tuple route
        try:
            req = self._decode(msg.data)
        except MsgspecError as e:
            return self._bad_request(e)
        route = <tuple>self._routes[type(req)]
        try:
            if route[1]:
                result = route[0](req, self._context(msg))
            else:
                result = route[0](req)
            return encode_ok(self._encode_into, result, buf, self._max_payload)
        except Exception as e:
            return self._raised(e, req)


cdef class SessionAnswers:
    """A Service's session workers' requests answered: a one-way send is dropped (a
    service answers calls); a call takes a slot, is answered, gives the slot back
    and is replied to on its own session. A reply to a session that ended while
    the handler ran is dropped, and logged at debug level."""

    cdef Answerer _answerer
    cdef Slots _slots
    cdef object _log
    cdef str _name

    def __init__(self, Answerer answerer, Slots slots, log, str name):
        self._answerer, self._slots, self._log, self._name = answerer, slots, log, name

    cpdef handle(self, msg, bytearray buf):
        if not msg.is_call:
            return
        self._slots.take()
        try:
            out = self._answerer.answer(msg, buf)
        finally:
            self._slots.give()
        try:
            msg.reply(out)
        except IPCError as e:
            self._log.debug("%s: session reply: %s", self._name, e)

    cpdef object handle_one(self, msg, bytearray buf, Py_ssize_t worker):
        """handle(); None, or what it let out beyond Exception (SystemExit and the
        like: the worker then ends and hands it to the service). A bug past the
        handler is logged, and the worker goes on serving."""
        try:
            self.handle(msg, buf)
        except Exception:
            self._log.exception("session worker %d: handling a request failed", worker)
        except BaseException as e:
            return e
        return None

    def handle_batch(self, list batch, bytearray buf, Py_ssize_t worker):
        """handle_one() for each request, in order; it stops at the first that
        returns what ends the worker, and returns that (else None)."""
        for msg in batch:
            fatal = self.handle_one(msg, buf, worker)
            if fatal is not None:
                return fatal
        return None
