"""The AEP/1 reference service: a separate program shipped in the same package.

It imports nothing from the rest of ``harness``: it shares only the protocol
document (PROTOCOL.md) with the harness. Run it as ``python -m
harness.reference``; :func:`harness.reference.__main__.main` is the entry point.

Modules, one job each: ``protocol`` (limits, key syntax, frame decoding),
``auth`` (HS256 tokens), ``store`` (per-user state and threads, LRU-bounded),
``connections`` (writer per connection, registry, lifecycle), ``runs`` (agent
runs and fan-out), ``metrics``, ``faults`` (deliberately broken stand-ins),
``dialect`` (the ``/ws`` wire format: AEP/1, or ``--dialect renamed`` with other
field names and the token in a first message), ``app`` (routes), ``__main__``
(command line).

Where AEP/1 leaves room, this service decides (each decision is repeated in
the module that implements it):

- ``exp`` is required: a token without it is malformed (401). ``sub`` and
  ``tenant`` must be non-empty strings. Only HS256 is accepted.
- The ``?token=`` query parameter is accepted on ``/ws`` only; over plain
  HTTP only the header counts. If the header is present it is the credential,
  valid or not.
- Every ``/api/*`` path (even an unknown one) and ``/ws`` need a token; 401
  beats every other status. Then: a body over 64 KiB (declared, or chunked and
  read up to the limit, whatever the method) → 413; unknown route → 404, wrong
  method → 405; bad key or thread id → 400; a PUT body that is not a JSON
  object with a ``value`` member (including an empty or non-UTF-8 body) → 400.
  The body's Content-Type is not checked.
- Thread ids follow the key rule (1–128 of ``[A-Za-z0-9._:-]``) both in
  ``/api/threads/{thread_id}`` (else 400) and in ``user_message`` frames (else
  a ``bad_request`` error frame).
- ``message_id`` is any non-empty string; uniqueness is not enforced.
- A field of the wrong JSON type counts as missing; extra fields are ignored.
- ``user_id`` in state responses and events is the token's ``sub``.
- ``GET /api/threads`` lists threads oldest first (by creation).
- ``GET /ws`` with a valid token but no upgrade → 400 ``bad_request``.
- Memory bounds: state 20,000 entries / 16 MiB; threads 20,000 / 16 MiB;
  256 newest messages per thread (``history`` then lists those only); 4,096
  frames queued per connection (a client that stops reading is closed with
  1013). No permessage-deflate (it would cost ~100s of KiB per connection).
"""
