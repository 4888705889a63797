"""Loads the bus schema (events.capnp) once; `Event` and `LogEntry` are its root types."""
import os

import capnp

events = capnp.load(os.path.join(os.path.dirname(__file__), "events.capnp"))
Event = events.Event
LogEntry = events.LogEntry
SCHEMA_ID = Event.schema.node.scopeId  # the file id written at the top of events.capnp
