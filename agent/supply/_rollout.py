"""The rollout guard: watches a new version's first invocations and decides when its
faults have used up the budget. Pure bookkeeping; `Supply` acts on the verdict and
keeps the counts on disk, so a node that restarts mid-watch goes on watching."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Watch:
    digest: str
    invocations: int = 0
    faults: list[str] = field(default_factory=list)


class RolloutGuard:
    def __init__(self, invocations: int, max_faults: int) -> None:
        self._window = invocations
        self._budget = max_faults
        self._watching: dict[str, Watch] = {}

    def start(self, name: str, digest: str) -> None:
        self._watching[name] = Watch(digest)

    def resume(self, name: str, watch: Watch) -> None:
        """Go on with a watch a previous run of the agent had not finished."""
        self._watching[name] = watch

    def watch(self, name: str) -> Watch | None:
        return self._watching.get(name)

    def stop(self, name: str) -> None:
        self._watching.pop(name, None)

    def record(self, name: str, digest: str, ok: bool, cause: str) -> str | None:
        """Count one invocation; the reason to roll back once faults exceed the budget."""
        watch = self._watching.get(name)
        if watch is None or watch.digest != digest:
            return None
        watch.invocations += 1
        if not ok:
            watch.faults.append(cause)
        if len(watch.faults) > self._budget:
            self.stop(name)
            return (
                f"{len(watch.faults)} faults in its first {watch.invocations} invocations "
                f"(budget {self._budget} in {self._window}); last: {watch.faults[-1]}"
            )
        if watch.invocations >= self._window:
            self.stop(name)
        return None
