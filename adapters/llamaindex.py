"""LlamaIndex Workflows (llama-index-workflows 2.x) over any savegame saver.

``WorkflowCheckpointer(workflow, saver)`` runs a workflow and puts a checkpoint after every
completed step, resumes a thread in a fresh workflow object (in another process too), and
keeps what a run paused for human input is waiting for, so a resumed caller can answer it
without catching a prompt the workflow does not emit again.

Snapshot mechanism: the public ``Context.to_dict()`` / ``Context.from_dict()`` pair, taken
from the handler's event stream when a step stops running (``StepStateChanged`` with
``NOT_RUNNING``), when a step asks for input (``InputRequiredEvent``) and when the run goes
idle waiting for input (``WorkflowIdleEvent``, if anything changed since). Each
checkpoint is a whole, independently restorable context; savegame delta-encodes it against
the previous one, so a step costs about its new data. The 2.26 journal/state-patch API
(``BasicRuntime.journal`` / ``state_checkpoint``) would store ticks (~2.6 kB per loop
iteration, more than a savegame delta) plus patches whose layout the library calls newer than
its docs, and a restore would need every record since the base: not worth the coupling.
The event stream can only be read once, so the checkpointer reads it and hands every event on
to :meth:`CheckpointedHandler.stream_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from savegame.savers._deps import require
from savegame.savers.base import BaseSaver
from savegame.savers.checkpoint import Checkpoint
from savegame.savers.errors import SavegameError, SerializationError
from savegame.savers.registry import as_saver
from savegame.savers.serde import imported_class

require("workflows", "llamaindex")

from workflows import Context, Workflow  # noqa: E402
from workflows.context.serializers import BaseSerializer, JsonSerializer  # noqa: E402
from workflows.events import (  # noqa: E402
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    InternalDispatchEvent,
    StepState,
    StepStateChanged,
    StopEvent,
    WorkflowIdleEvent,
)

if TYPE_CHECKING:
    from workflows.handler import WorkflowHandler

__all__ = [
    "CheckpointInfo",
    "CheckpointSerializationError",
    "CheckpointedHandler",
    "PendingInput",
    "SafeJsonSerializer",
    "WorkflowCheckpointer",
]

#: Keys of the checkpoint state.
_CONTEXT = "context"
_PROMPT = "prompt"
_FRAMEWORK = "llamaindex"


class CheckpointSerializationError(SerializationError):
    """The workflow context holds a value that cannot be serialized: the run is stopped and
    no checkpoint of that step is written. ``path`` names the offending key."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a thread as :meth:`WorkflowCheckpointer.checkpoints` lists it."""

    id: str
    step: int
    step_name: str | None
    created_at: datetime | None
    running: bool
    pending_input: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingInput:
    """What a paused run is waiting for.

    ``kind`` is ``"input_required"`` (a step returned an :class:`InputRequiredEvent`) or
    ``"wait_for_event"`` (a step is parked in ``ctx.wait_for_event``). ``prompt`` is the
    prompt event the run emitted (the ``InputRequiredEvent``, or the ``waiter_event``), rebuilt
    from the checkpoint; ``expects`` the qualified names of the event types that answer it;
    ``step`` and ``waiter_id`` locate a ``wait_for_event`` waiter.
    """

    thread_id: str
    checkpoint_id: str
    kind: str
    expects: tuple[str, ...]
    prompt: Event | None = None
    step: str | None = None
    waiter_id: str | None = None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Pump:
    """Reads a run's event stream once: snapshots the context after each completed step
    and on idle, puts checkpoints in order, and hands every event on to the caller."""

    def __init__(
        self,
        owner: WorkflowCheckpointer,
        handler: WorkflowHandler,
        thread_id: str,
        parent_id: str | None,
        prompt: str | None,
    ) -> None:
        self.owner = owner
        self.handler = handler
        self.thread_id = thread_id
        self.parent_id = parent_id
        #: The serialized prompt awaiting an answer, carried over from a resumed checkpoint.
        self.prompt = prompt
        self.waiters = 0
        self.last_step: str | None = None
        self.error: BaseException | None = None
        #: True while nothing happened since the last checkpoint (no need for another).
        self.fresh = False
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.last_checkpoint: Checkpoint | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.handler.stream_events(expose_internal=True):
                # Checkpoint first, then hand the event on: a caller who sees an event
                # (a prompt above all) knows the checkpoint it implies is written.
                await self._observe(event)
                self.events.put_nowait(event)
        except SavegameError as exc:
            self.error = exc
            with contextlib.suppress(Exception):
                await self.handler.cancel_run()
        except Exception:  # the run failed: awaiting the handler reports it
            pass
        finally:
            self.events.put_nowait(None)

    async def _observe(self, event: Event) -> None:
        if isinstance(event, InputRequiredEvent):
            self.prompt = self.owner._serializer.serialize(event)
            await self._checkpoint(self.last_step, "input_required")
        elif isinstance(event, StepStateChanged):
            self.fresh = False
            if event.step_state == StepState.RUNNING:
                if event.input_event_name in self.owner._response_names:
                    self.prompt = None  # an answer reached its step
            elif event.step_state == StepState.NOT_RUNNING:
                self.last_step = event.name
                await self._checkpoint(event.name, "step")
        elif isinstance(event, WorkflowIdleEvent) and not self.fresh:
            await self._checkpoint(self.last_step, "idle")

    def answered(self) -> None:
        self.prompt = None

    async def _checkpoint(self, step_name: str | None, reason: str) -> None:
        snapshot = self._snapshot()
        waiters = [
            {"step": name, "waiter_id": w.get("waiter_id"),
             "expects": w.get("waiting_for_event")}
            for name, worker in snapshot.get("workers", {}).items()
            for w in worker.get("collected_waiters", [])
        ]
        if len(waiters) < self.waiters:
            self.prompt = None  # a waiter was resolved: its prompt is answered
        self.waiters = len(waiters)
        running = bool(snapshot.get("is_running"))
        if not running:
            self.prompt = None
        pending: list[dict[str, Any]] = [{"kind": "wait_for_event", **w} for w in waiters]
        if not pending and self.prompt is not None:
            pending.append({"kind": "input_required", "step": step_name, "waiter_id": None,
                            "expects": None})
        queued = [name for name, worker in snapshot.get("workers", {}).items()
                  if worker.get("queue") or worker.get("in_progress")]
        metadata = {
            "framework": _FRAMEWORK,
            "workflow": self.owner.workflow.workflow_name,
            "run_id": self.handler.run_id,
            "reason": reason,
            "running": running,
            "pending_input": bool(pending),
            "pending": pending,
        }
        checkpoint = Checkpoint(
            thread_id=self.thread_id,
            namespace=self.owner.namespace,
            state={_CONTEXT: snapshot, _PROMPT: self.prompt if pending else None},
            parent_id=self.parent_id,
            node_id=step_name,
            next_node_id=queued[0] if queued else None,
            metadata=metadata,
        )
        stored = await self.owner.saver.aput(checkpoint)
        self.parent_id = None  # later checkpoints follow the one just written
        self.last_checkpoint = stored
        self.fresh = True

    def _snapshot(self) -> dict[str, Any]:
        try:
            return self.handler.ctx.to_dict()
        except Exception as exc:
            raise _serialization_error(exc, self.thread_id) from exc


_KEY = re.compile(r"for key (?P<key>[^:]+):")


def _serialization_error(exc: Exception, thread_id: str) -> CheckpointSerializationError:
    message = str(exc)
    match = _KEY.search(message)
    key = match.group("key").strip() if match else None
    type_match = re.search(r"<class '(?P<type>[^']+)'>", message)
    where = f"ctx.store key {key!r}" if key else "the workflow context"
    return CheckpointSerializationError(
        f"cannot checkpoint thread {thread_id!r}: {where} does not serialize "
        f"({message}); no checkpoint was written and the run was stopped",
        path=f"ctx.store[{key!r}]" if key else "context",
        type_name=type_match.group("type") if type_match else None,
    )


class CheckpointedHandler:
    """The handler of a checkpointed run: awaitable like a ``WorkflowHandler`` (the await
    also waits for the run's last checkpoint), with ``stream_events`` fed by the
    checkpointer. Other attributes are those of the workflow's handler."""

    def __init__(self, pump: _Pump) -> None:
        self._pump = pump
        self.handler = pump.handler
        self.thread_id = pump.thread_id
        self._streamed = False

    @property
    def ctx(self) -> Context:
        return self.handler.ctx

    @property
    def run_id(self) -> str:
        return self.handler.run_id

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint written last by this run (None before its first step ends)."""
        return self._pump.last_checkpoint

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handler, name)

    async def _result(self) -> Any:
        try:
            result = await self.handler
        except asyncio.CancelledError:
            raise
        except BaseException:
            await asyncio.shield(self._pump.task)
            if self._pump.error is not None:
                raise self._pump.error from None
            raise
        await asyncio.shield(self._pump.task)
        if self._pump.error is not None:
            raise self._pump.error
        return result

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def wait_checkpointed(self) -> None:
        """Wait until the run has ended and every checkpoint of it is written."""
        await asyncio.shield(self._pump.task)
        if self._pump.error is not None:
            raise self._pump.error

    async def stream_events(self, expose_internal: bool = False) -> AsyncGenerator[Event, None]:
        """The run's events, in order (internal ones only with ``expose_internal``)."""
        if self._streamed:
            raise RuntimeError("the events of this run have already been streamed")
        self._streamed = True
        while True:
            event = await self._pump.events.get()
            if event is None:
                if self._pump.error is not None:
                    raise self._pump.error
                return
            if isinstance(event, InternalDispatchEvent) and not expose_internal:
                continue
            yield event
            if isinstance(event, StopEvent):
                return

    async def send_event(self, event: Event, step: str | None = None) -> None:
        await self.handler.send_event(event, step)

    async def respond(self, event: Event) -> None:
        """Send the answer to the pending input of this run."""
        self._pump.answered()
        self.handler.ctx.send_event(event)

    async def cancel_run(self, *, timeout: float = 5.0) -> None:
        await self.handler.cancel_run(timeout=timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._pump.task), timeout)


class WorkflowCheckpointer:
    """Checkpoint a LlamaIndex workflow after every step into a savegame saver.

    ``saver`` is any savegame saver; its async methods are used (a sync saver such as
    ``MongoSaver`` runs its blocking IO in a worker thread, so the event loop never stalls).
    Every method that reads or writes the saver is a coroutine; :meth:`run` returns the
    handler at once, like ``Workflow.run``.

    Snapshots name classes (events, pydantic models in ``ctx.store``); restoring them never
    imports a class by a name read from storage. The default serializer
    (:class:`SafeJsonSerializer`) resolves the workflow's own events
    (``workflow.events``), the classes given in ``allowed_types``, and any ``Event``
    subclass the program has already imported (so the events a step ``wait_for_event``s
    on need no configuration); other classes, such as the pydantic models you keep in
    ``ctx.store``, must be listed in ``allowed_types``. A ``serializer`` you pass, or the
    workflow's own, is used as it is.
    """

    def __init__(
        self,
        workflow: Workflow,
        saver: BaseSaver | str,
        *,
        namespace: str = "",
        serializer: BaseSerializer | None = None,
        allowed_types: Iterable[type[Any]] = (),
    ) -> None:
        self.workflow = workflow
        # a store URI is opened here (open_async_saver) and closed by aclose()
        self.saver, self._owns_saver = as_saver(saver, asynchronous=True,
                                                what="WorkflowCheckpointer's saver")
        self.namespace = namespace
        self._serializer: BaseSerializer = (
            serializer if serializer is not None
            else workflow.serializer if workflow.serializer is not None
            else SafeJsonSerializer(allowed_types=_known_classes(workflow, allowed_types))
        )
        response_types = [
            cls for cls in workflow.events
            if isinstance(cls, type) and issubclass(cls, HumanResponseEvent)
        ]
        self._response_names = {cls.__name__ for cls in response_types}
        self._response_types = tuple(_qualified(cls) for cls in response_types)
        self._live: dict[str, CheckpointedHandler] = {}

    # -- running -------------------------------------------------------------------------
    def run(self, *, thread_id: str | None = None, **start_kwargs: Any) -> CheckpointedHandler:
        """Start the workflow (``start_kwargs`` go to ``Workflow.run``) and checkpoint it
        under ``thread_id`` (a new uuid when None; read it from the handler's
        ``thread_id``). Must be called with an event loop running."""
        thread_id = thread_id if thread_id is not None else str(uuid.uuid4())
        handler = self.workflow.run(**start_kwargs)
        return self._track(_Pump(self, handler, thread_id, None, None))

    async def resume(
        self, thread_id: str, checkpoint_id: str | None = None, **kwargs: Any
    ) -> CheckpointedHandler:
        """Rebuild the thread's context from a checkpoint (the latest by default) in this
        checkpointer's workflow object and continue the run; returns its handler.

        Steps that had completed do not run again, queued events stay queued, a step that
        was running when the checkpoint was taken runs again. Resuming an older checkpoint
        forks the thread: later checkpoints descend from it. ``kwargs`` go to
        ``Workflow.run`` (they start a new run when the checkpoint's run had ended).
        """
        checkpoint = await self._load(thread_id, checkpoint_id)
        state = checkpoint.state
        ctx = Context.from_dict(self.workflow, dict(state[_CONTEXT]),
                                serializer=self._serializer)
        handler = self.workflow.run(ctx=ctx, **kwargs)
        prompt = state.get(_PROMPT) if checkpoint.metadata.get("pending_input") else None
        pump = _Pump(self, handler, thread_id, checkpoint.id, prompt)
        pump.waiters = sum(1 for p in checkpoint.metadata.get("pending", [])
                           if p.get("kind") == "wait_for_event")
        return self._track(pump)

    def _track(self, pump: _Pump) -> CheckpointedHandler:
        handler = CheckpointedHandler(pump)
        self._live[pump.thread_id] = handler
        pump.task.add_done_callback(
            lambda _: self._live.pop(pump.thread_id, None)
            if self._live.get(pump.thread_id) is handler else None
        )
        return handler

    # -- human in the loop -----------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the saver if this checkpointer opened it from a store URI."""
        if self._owns_saver:
            self._owns_saver = False
            await self.saver.aclose()

    async def pending_input(self, thread_id: str) -> PendingInput | None:
        """What the thread's latest checkpoint is waiting for, or None."""
        checkpoint = await self.saver.aget(thread_id, namespace=self.namespace)
        if checkpoint is None or not checkpoint.metadata.get("pending_input"):
            return None
        first = checkpoint.metadata["pending"][0]
        raw_prompt = checkpoint.state.get(_PROMPT)
        prompt = self._serializer.deserialize(raw_prompt) if raw_prompt else None
        if first["kind"] == "wait_for_event":
            expects: tuple[str, ...] = (first["expects"],) if first.get("expects") else ()
        else:
            expects = self._response_types
        assert checkpoint.id is not None
        return PendingInput(
            thread_id=thread_id, checkpoint_id=checkpoint.id, kind=first["kind"],
            expects=expects, prompt=prompt if isinstance(prompt, Event) else None,
            step=first.get("step"), waiter_id=first.get("waiter_id"),
        )

    async def respond(self, thread_id: str, event: Event, **kwargs: Any) -> CheckpointedHandler:
        """Answer the thread's pending input with ``event``: sent to the run when it is
        live in this process, else the latest checkpoint is resumed (``kwargs`` go to
        :meth:`resume`) and the event sent to it. Returns the run's handler."""
        live = self._live.get(thread_id)
        if live is None or live.handler.is_done():
            if await self.pending_input(thread_id) is None:
                raise ValueError(f"thread {thread_id!r} is not waiting for input")
            live = await self.resume(thread_id, **kwargs)
        await live.respond(event)
        return live

    # -- inspection ------------------------------------------------------------------------
    async def checkpoints(self, thread_id: str, *, limit: int | None = None
                          ) -> list[CheckpointInfo]:
        """The thread's checkpoints, newest first, with step names and timestamps."""
        out: list[CheckpointInfo] = []
        async for item in self.saver.alist(thread_id, namespace=self.namespace, limit=limit):
            assert item.id is not None and item.step is not None
            out.append(CheckpointInfo(
                id=item.id, step=item.step, step_name=item.node_id,
                created_at=item.created_at, running=bool(item.metadata.get("running")),
                pending_input=bool(item.metadata.get("pending_input")),
                metadata=item.metadata,
            ))
        return out

    async def _load(self, thread_id: str, checkpoint_id: str | None) -> Checkpoint:
        checkpoint = await self.saver.aget(thread_id, checkpoint_id, namespace=self.namespace)
        if checkpoint is None:
            which = f"checkpoint {checkpoint_id!r}" if checkpoint_id else "any checkpoint"
            raise LookupError(f"thread {thread_id!r} has no {which}")
        if checkpoint.metadata.get("framework") != _FRAMEWORK or _CONTEXT not in \
                checkpoint.state:
            raise ValueError(f"checkpoint {checkpoint.id!r} of thread {thread_id!r} was not "
                             "written by the LlamaIndex workflow checkpointer")
        return checkpoint


class SafeJsonSerializer(JsonSerializer):
    """LlamaIndex's ``JsonSerializer`` that never imports a class named by stored data.

    A stored ``qualified_name`` resolves, in this order, to: a class given in
    ``allowed_types`` (or a framework-owned persistence type), as ``JsonSerializer`` does;
    else an **already imported** subclass of :class:`workflows.events.Event` carrying
    exactly that name (looked up in ``sys.modules`` and class dictionaries by
    :func:`savegame.savers.serde.imported_class`: no import, no module ``__getattr__``);
    else the name is refused with ``ValueError``. String entries in ``allowed_types`` keep
    ``JsonSerializer``'s lookup by import for that one name: an explicit opt-in.

    Why this is safe: what a stored name can select is limited to event classes the
    running program has itself imported; rebuilding one validates the stored fields with
    that event's pydantic model, which is what LlamaIndex does with every event it
    receives. A function (``os.system``), a class of another kind (``subprocess.Popen``)
    or a module the program has not imported is never reached.
    """

    def resolve_class(self, qualified_name: str) -> type[Any]:
        known = self._registered_types.get(qualified_name)
        if known is not None:
            return known
        event = imported_class(qualified_name, Event)
        if event is not None:
            return event
        return super().resolve_class(qualified_name)

    def with_types(self, *classes: type[Any]) -> JsonSerializer:
        if self._allowed_type_names is None:
            return self
        registered = tuple(dict.fromkeys(self._registered_types.values()))
        legacy = self._allowed_type_names - self._registered_types.keys()
        return SafeJsonSerializer(allowed_types=(*registered, *legacy, *classes))


def _known_classes(workflow: Workflow, extra: Iterable[type[Any]]) -> list[type[Any]]:
    """The classes a snapshot of ``workflow`` may name: its events plus ``extra``, once."""
    classes: dict[type[Any], None] = {}
    for cls in (*workflow.events, *extra):
        if isinstance(cls, type):
            classes.setdefault(cls, None)
    return list(classes)

