"""The scheduler's errors."""


class ScheduleError(ValueError):
    """A schedule cannot be created or changed as asked (message is for the user)."""


class Interrupted(Exception):
    """The worker was asked to stop; the run ends between two steps."""


class LeaseLost(Exception):
    """Another worker took this run's lease (this one stopped renewing it in time)."""
