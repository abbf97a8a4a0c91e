"""Awaiting completions in asyncio: one reader per (event loop, client event fd), never a thread
blocked per await. The library's one watcher thread per client proves the watched completions and
makes the client's event fd readable once one has its final outcome; the loop's reader takes the
resolved tokens (etb_client_take_resolved) and resolves the futures waiting on them. A cancelled
await's future leaves its reader's set; the completion stays usable (and watched: its token is
dropped when it comes)."""
import asyncio
import itertools
import threading
import weakref

# Tokens are unique per process: several clients and loops never confuse them.
_tokens = itertools.count(1)
_lock = threading.Lock()


def next_token():
    with _lock:
        return next(_tokens)


class Readers:
    """A client's readers, one per event loop, and which reader waits on which token (a token
    taken by one loop's reader goes to the loop that awaits it)."""

    def __init__(self, event_fd, take_resolved):
        self._event_fd, self._take = event_fd, take_resolved
        self._by_loop = weakref.WeakKeyDictionary()
        self._owner = {}  # token -> _Reader awaiting it
        self._lock = threading.Lock()

    def future_for(self, token):
        """A future of the running loop resolved once `token` is taken from the client."""
        loop = asyncio.get_running_loop()
        with self._lock:
            reader = self._by_loop.get(loop)
            if reader is None:
                reader = self._by_loop[loop] = _Reader(self, loop, self._event_fd())
            self._owner[token] = reader
        return reader.add(token)

    def dispatch(self, tokens):
        """Hands each taken token to the reader awaiting it (in its own loop)."""
        for token in tokens:
            with self._lock:
                reader = self._owner.pop(token, None)
            if reader is not None:
                reader.resolve_soon(token)

    def forget(self, token):
        with self._lock:
            self._owner.pop(token, None)

    def take(self):
        return self._take()


class _Reader:
    """The one `add_reader` callback of a loop on a client's event fd, while futures wait."""

    def __init__(self, readers, loop, fd):
        self.readers, self.loop, self.fd = readers, loop, fd
        self.futures = {}  # token -> [futures]
        self.reading = False

    def add(self, token):
        fut = self.loop.create_future()
        self.futures.setdefault(token, []).append(fut)
        fut.add_done_callback(lambda f, t=token: self._discard(t, f))
        if not self.reading:
            self.loop.add_reader(self.fd, self._ready)
            self.reading = True
        return fut

    def _ready(self):
        self.readers.dispatch(self.readers.take())

    def resolve_soon(self, token):
        if self.loop.is_closed():
            return
        if threading.get_ident() == getattr(self.loop, "_thread_id", None):
            self._resolve(token)
        else:
            self.loop.call_soon_threadsafe(self._resolve, token)

    def _resolve(self, token):
        for fut in self.futures.pop(token, []):
            if not fut.done():
                fut.set_result(None)
        self._stop_if_idle()

    def _discard(self, token, fut):
        """A future done (resolved, or cancelled with its task): it leaves the set."""
        waiting = self.futures.get(token)
        if waiting and fut in waiting:
            waiting.remove(fut)
            if not waiting:
                del self.futures[token]
                self.readers.forget(token)
        self._stop_if_idle()

    def _stop_if_idle(self):
        if self.reading and not self.futures and not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            self.reading = False
