"""The locald-admin mechanism: the root service behind org.locald.Admin1.

Data flows one way: bus message (service) -> authorize (polkit) -> resolve
scope (scope) -> delete (walk) -> reply (service).
"""
