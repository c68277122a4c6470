"""Messages between the caller and a local worker (pickled tuples; the first item is the kind).

caller -> worker
    (CALLS, [call, ...], releases)   call = (seq, digest, fn_payload | None, data, descs, cpus,
                                     capture_output); releases: result segments the caller
                                     no longer uses
    (EXIT,)
worker -> caller
    (READY, pid, ready_ns, preload_ns)
    (RESULTS, [reply, ...])          reply = (seq, status, data, descs, deser_ns, start_ns,
                                     end_ns, fn_load_ns, stdout, stderr, retained, recv_ns)

``status`` is VALUE, EXCEPTION (data: pickled (exception, traceback text)) or
EXCEPTION_TEXT (data: pickled (type name, message, traceback text)).
A worker also writes (seq, start_ns) of the call it is running into its slot of the pool's
control segment, so the caller knows which call a dead worker was running.
"""

CALLS = 1
EXIT = 2
READY = 3
RESULTS = 4

VALUE = 0
EXCEPTION = 1
EXCEPTION_TEXT = 2

CONTROL_SLOT = 16  # bytes per worker in the control segment: int64 seq, int64 start_ns
