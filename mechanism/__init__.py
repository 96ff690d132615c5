"""The locald-admin mechanism: the root service behind org.locald.Admin1.

Data flows one way: bus message (service) -> authorize (polkit) -> queue
(jobs) -> resolve scope (engine, scope) -> mount check and delete
(locald_admin.fs.remove, walk) -> reply and audit line (service).
"""
