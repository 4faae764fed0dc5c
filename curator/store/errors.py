"""Plain error types of the store (datasette/sqlite-utils style)."""


class StoreError(Exception):
    """Base class: the message is meant for the user as is."""


class StoreLocked(StoreError):
    """Another process held the store's write lock for longer than the timeout."""


class NotFound(StoreError):
    """A dataset, version, selection or run that does not exist."""


class SchemaTooNew(StoreError):
    """The store was written by a newer curator than this one."""
