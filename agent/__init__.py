"""The in-vehicle agent: ingest, decode, policy, batch, sign, store and publish.

Threads, and what each one owns (anything two threads share is named here with its guard):

``main`` (``Agent.run``)
    Starts and stops the others in order, writes the live status file every second, and ends
    a replay run. Owns nothing the others write.
``bus-<name>`` (``source.BusSupervisor``), one per live bus
    Opens the bus (python-can), reopens it with back-off when ``recv`` fails, and closes it.
    Owns the ``can.BusABC`` and its ``can.Notifier``.
``can.Notifier`` reader, one per open live bus (python-can's own thread)
    Calls ``recv`` and then the listeners: the bus's ``Collector`` (its de-duplication table,
    gates and counters are its own), the J1939 DM1 tap, the OBD-II ISO-TP listeners, and
    through ``emit`` the DTC and trigger watchers (shared by every bus, each under its own
    ``_lock``). It never waits for the disk, the network or a signature: samples and events
    go to the sealing queues, which never block (full: dropped and counted). A listener's
    error is counted and logged there; only a failing ``recv`` reopens the bus.
``replay-<name>`` (``ingest.Ingest``), one per replayed log
    Reads the file (it owns the reader) into the same listener chain. A file may wait, so a
    replay waits while the sample queue is half full instead of dropping.
``obd-<name>`` (``obd.ObdPoller``), one per bus with ``obd``
    Polls OBD-II over ISO-TP through that bus's notifier; emits like a bus thread.
``sealer`` (``sealer.Sealer``)
    Owns the ``Batcher`` (the open batch). Drains the queues (``collections.deque``, whose
    append and popleft are atomic), closes batches, compresses them (zstd: one compressor per
    thread, ``wire.body``), signs them and commits them to the outbox. The only thread that
    seals.
``publisher`` (``publish.Publisher``)
    Owns the MQTT ``Connection`` it makes (one per network connection), the in-flight window,
    the rate limiter, the reconnect back-off and the link watch. Reads and deletes outbox rows;
    signs its own online/offline status (its own zstd compressor).
paho's network thread, one per ``Connection``
    Socket I/O; its callbacks resolve publish futures (under ``Connection._lock``) and hand
    receipts to the outbox.

Shared, with their guards: the ``Outbox`` (one SQLite connection, every use under
``Outbox._lock``; the sequence counter under ``Outbox._seq_lock``, so that a bus thread can
reserve an events envelope's number while the sealing thread is inside an fsync), and each
``faults.FaultLog`` (its own lock, taken only when something failed).
"""
