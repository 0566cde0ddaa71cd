"""The fan-out engine: pane histories, broadcast, cancel and regenerate, as a stream of typed events."""

from personachat.engine.events import (
    Cancelled,
    Delta,
    Event,
    Failed,
    Finished,
    Projected,
    Started,
    Timings,
    Usage,
)

__all__ = ["Cancelled", "Delta", "Event", "Failed", "Finished", "Projected", "Started", "Timings", "Usage"]
