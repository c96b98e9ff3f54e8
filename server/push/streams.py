"""What every transport shares: the app's services, and the opening of a stream (snapshot, or welcome and replay).

The opening joins nothing itself: the transport has joined the project's channel first,
so live events queue up meanwhile, and the opening trims them so none repeats.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..channel import Subscriber
from ..cursor import Cursor, Snapshot, plan
from ..engine import Engine
from ..hub import Hub
from ..limits import Limits
from ..settings import Settings
from ..wire import Message, job_message, output_message, snapshot_message, welcome_message

#: Events read from the store per query while replaying.
REPLAY_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Services:
    engine: Engine
    hub: Hub
    settings: Settings
    limits: Limits


def services_of(scope_state: Any) -> Services:
    return Services(scope_state.engine, scope_state.hub, scope_state.settings, scope_state.limits)


async def opening_messages(
    services: Services, project_id: str, cursor: Cursor | None, sub: Subscriber
) -> list[Message]:
    """What a subscriber gets first. Live events queued meanwhile are trimmed so none repeats."""
    store = services.engine.store
    last_seq = await store.last_seq(project_id)
    decision = plan(cursor, epoch=store.epoch, last_seq=last_seq, history=services.settings.history)
    if isinstance(decision, Snapshot):
        state = await store.snapshot(project_id, list(services.engine.agents))
        sub.rebase(state.seq)
        messages = [snapshot_message(project_id, store.epoch, state, decision.reason)]
    else:
        messages = [welcome_message(project_id, store.epoch, last_seq)]
        after = decision.after
        while events := await store.events_after(project_id, after, REPLAY_BATCH):
            for event in events:
                whole = event.output()  # a job that ended while the client was away: its output, then its end
                if whole is not None:
                    messages.append(output_message(whole))
                messages.append(job_message(event))
            after = events[-1].seq
        sub.rebase(after)
    services.hub.add_latest_progress(project_id, sub)
    # Each running job's output so far, from offset 0, read after joining: what streams on arrives after it
    # (and any overlap with what queued meanwhile is trimmed), so the subscriber has every character once.
    for chunk in await store.outputs_of(project_id):
        messages.append(output_message(chunk))
        sub.rebase_output(chunk.job_id, chunk.attempt, chunk.end)
    return messages
