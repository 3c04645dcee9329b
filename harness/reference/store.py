"""Per-user state and threads, bounded by least-recently-used eviction.

Everything is keyed by the owning user, the pair (tenant, sub) (AEP/1 §2: keys
and thread ids are per user). Both stores evict the least recently used entry
once they exceed an entry cap or a byte cap, so memory stays bounded however
many users the service serves (AEP/1 §4). A thread keeps its newest
``MAX_MESSAGES_PER_THREAD`` messages; ``history`` then lists those only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from harness.reference.auth import Identity

MAX_STATE_ENTRIES = 20_000
MAX_STATE_BYTES = 16 * 1024 * 1024
MAX_THREADS = 20_000
MAX_THREAD_BYTES = 16 * 1024 * 1024
MAX_MESSAGES_PER_THREAD = 256
_ENTRY_OVERHEAD = 200  # rough bytes of bookkeeping per entry, counted against the byte cap


class StateStore:
    """JSON values per (user, key); values are kept serialised."""

    def __init__(
        self, *, max_entries: int = MAX_STATE_ENTRIES, max_bytes: int = MAX_STATE_BYTES
    ) -> None:
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def _slot(self, user: Identity, key: str) -> Hashable:
        return (user, key)

    def put(self, user: Identity, key: str, value: bytes) -> None:
        """Store ``value`` (serialised JSON) under ``key`` for ``user``."""
        slot = self._slot(user, key)
        self.delete(user, key)
        self._entries[slot] = value
        self._bytes += len(value) + _ENTRY_OVERHEAD
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted) + _ENTRY_OVERHEAD

    def get(self, user: Identity, key: str) -> bytes | None:
        """Return the serialised value, or None when unset (or evicted)."""
        slot = self._slot(user, key)
        value = self._entries.get(slot)
        if value is not None:
            self._entries.move_to_end(slot)
        return value

    def delete(self, user: Identity, key: str) -> None:
        """Forget ``key`` for ``user``; deleting an unset key is a no-op."""
        value = self._entries.pop(self._slot(user, key), None)
        if value is not None:
            self._bytes -= len(value) + _ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(eq=False, slots=True)
class Thread:
    """One thread's messages, oldest first: ``(message_id, content)`` pairs."""

    thread_id: str
    messages: list[tuple[str, str]] = field(default_factory=list)
    nbytes: int = 0


class ThreadStore:
    """Threads per (user, thread id), plus each user's thread ids in creation order."""

    def __init__(
        self,
        *,
        max_threads: int = MAX_THREADS,
        max_bytes: int = MAX_THREAD_BYTES,
        max_messages: int = MAX_MESSAGES_PER_THREAD,
    ) -> None:
        self._threads: OrderedDict[Hashable, Thread] = OrderedDict()
        # user -> slots of their threads, in creation order (dict as ordered set)
        self._by_user: dict[Identity, dict[Hashable, None]] = {}
        self._indexed_by: dict[Hashable, set[Identity]] = {}
        self._bytes = 0
        self._max_threads = max_threads
        self._max_bytes = max_bytes
        self._max_messages = max_messages

    def _slot(self, user: Identity, thread_id: str) -> Hashable:
        return (user, thread_id)

    def append(self, user: Identity, thread_id: str, message_id: str, content: str) -> list[str]:
        """Add a message to the user's thread; return the thread's message ids, oldest first.

        The returned list is a snapshot: it is the run's ``history`` (AEP/1 §3),
        fixed when the message is accepted.
        """
        slot = self._slot(user, thread_id)
        thread = self._threads.get(slot)
        if thread is None:
            thread = self._threads[slot] = Thread(thread_id)
        else:
            self._threads.move_to_end(slot)
        self._by_user.setdefault(user, {})[slot] = None
        self._indexed_by.setdefault(slot, set()).add(user)
        size = len(message_id) + len(content) + _ENTRY_OVERHEAD
        thread.messages.append((message_id, content))
        thread.nbytes += size
        self._bytes += size
        while len(thread.messages) > self._max_messages:
            old_id, old_content = thread.messages.pop(0)
            freed = len(old_id) + len(old_content) + _ENTRY_OVERHEAD
            thread.nbytes -= freed
            self._bytes -= freed
        history = [message_id for message_id, _ in thread.messages]
        self._evict()
        return history

    def _evict(self) -> None:
        while len(self._threads) > self._max_threads or self._bytes > self._max_bytes:
            slot, thread = self._threads.popitem(last=False)
            self._bytes -= thread.nbytes
            for owner in self._indexed_by.pop(slot):
                slots = self._by_user[owner]
                del slots[slot]
                if not slots:
                    del self._by_user[owner]

    def get(self, user: Identity, thread_id: str) -> Thread | None:
        """Return the user's thread, or None."""
        return self._threads.get(self._slot(user, thread_id))

    def threads_of(self, user: Identity) -> list[Thread]:
        """The user's threads, oldest first."""
        return [self._threads[slot] for slot in self._by_user.get(user, {})]

    def __len__(self) -> int:
        return len(self._threads)


class StateBackend(Protocol):
    """Where the HTTP handlers keep state; async so it may live behind a network hop."""

    async def put(self, user: Identity, key: str, value: bytes) -> None: ...
    async def get(self, user: Identity, key: str) -> bytes | None: ...
    async def delete(self, user: Identity, key: str) -> None: ...
    async def aclose(self) -> None: ...


class LocalStateBackend:
    """State in this process's :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def put(self, user: Identity, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` for ``user``."""
        self._store.put(user, key, value)

    async def get(self, user: Identity, key: str) -> bytes | None:
        """The value, or None when unset."""
        return self._store.get(user, key)

    async def delete(self, user: Identity, key: str) -> None:
        """Forget ``key`` for ``user``."""
        self._store.delete(user, key)

    async def aclose(self) -> None:
        """Nothing to release."""
