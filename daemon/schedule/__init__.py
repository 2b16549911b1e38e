"""Schedules and reruns (SPEC §6): the scheduler is just another producer of request files.

At each fire it writes a request into the inbox through ``daemon.submit.drop_request``,
and from there the request takes the same path as a user's drop (intake, runner,
``done/`` or ``failed/``). Modules:

- ``cron``: cron expressions (5 fields, or 6 with seconds) as APScheduler triggers;
- ``state``: ``state/scheduler.sqlite``: when each job is next due, and the drop log
  (every request the scheduler wrote, once per key);
- ``store``: the APScheduler job store that persists next run times there;
- ``executor``: runs each due fire in the scheduler thread, told which fire it is;
- ``produce``: writes a request exactly once per key, also across crashes;
- ``fires``: the request a schedule writes at one fire;
- ``reruns``: the rerun window (transient failures, deferred analyses);
- ``scheduler``: the wiring, started and stopped by the service;
- ``report``: ``scanrelay schedules`` and the schedule lines of ``scanrelay status``.
"""
