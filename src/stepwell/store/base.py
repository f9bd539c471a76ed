"""The storage interface, in domain terms.

A backend provides a `Store`: an async façade whose `write` runs a *transaction script* (a plain
function of a `Tx`) atomically, and whose `read` runs a read-only one. Scripts from many runs are
committed together (group commit), which is where throughput comes from; a script must therefore
touch nothing but the `Tx` and its own locals, because the backend may run it again (alone) if
another script in the same group fails.

Every `Tx` method documents its atomicity guarantee: the compare-and-set ones return whether the
change happened, so two workers can never both complete the same step or the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, TypeVar

from stepwell.core.models import Event, Memo, RunStatus
from stepwell.core.storage import StorageFailure

R = TypeVar("R")


@dataclass(slots=True)
class RunRow:
    """A run as stored: the one shape of a run below the public `Run` view, for a run being
    created (`insert_run` writes every field as given) and for one read back.

    The public `stepwell.Run` stays a separate class: it is the documented API (with the run's
    steps and its first event as `event_id`), built from this row by `runtime.views`.
    """

    id: str
    function_id: str
    event_ids: list[str]
    created_at: int
    status: RunStatus = "queued"
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    parent_step: str | None = None          # hashed step id in the parent (invoke)
    replay_of: str | None = None            # the run this one replays
    version: str | None = None              # of the function's code the run started on


@dataclass(slots=True)
class QueueItem:
    """Work to do at or after `due_at`; `unique_key` keeps one item per purpose.

    Kinds: `exec` (run or resume a run; key `exec:<run>`), `cron` (fire a schedule; key
    `cron:<fn>:<n>`), `timeout` (enforce `timeouts.finish` / `start`; key `timeout:<run>:<which>`),
    `route` (route events a process without functions stored; key `route:<first event>`),
    `batch` and `debounce` (a flow-control window; see `core.queue` for every kind and key).
    `event_id`: the event the item holds back (a debounce's latest), kept from pruning.
    """

    id: int
    kind: str
    unique_key: str
    due_at: int
    run_id: str | None = None
    payload: dict[str, Any] | None = None
    priority_at: int = 0
    concurrency: list[tuple[str, int]] = field(default_factory=list)   # (key, limit) held
    owner: str | None = None
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class HeldWindow:
    """A debounce or batch window of a function that has not fired yet (`Tx.held_windows`):
    events flow control holds back, with no run yet. `key` is the evaluated key ("" for an
    option without one); `due_at` is when it fires (a batch fires sooner if it fills);
    `created_at` when its first event came (None for a batch stored before stepwell recorded
    it); `events` how many it holds (a debounce: 1, its latest); `event_id` the one a debounce
    will run with, or a batch's oldest."""

    kind: str
    key: str
    due_at: int
    created_at: int | None
    events: int
    event_id: str | None


@dataclass(slots=True)
class UsageRow:
    """Tokens one attempt of a step spent on one model (`calls` requests summed)."""

    run_id: str
    step_hash: str
    attempt: int
    model: str
    step_id: str
    input_tokens: int
    output_tokens: int
    calls: int
    at: int


@dataclass(slots=True)
class StreamItem:
    """One item of a durable stream (`step.publish`): `offset` counts from 1 per channel.
    `step_id` / `attempt` name the step attempt that published it (None: the handler)."""

    channel: str
    offset: int
    topic: str
    data: Any
    run_id: str | None
    step_id: str | None
    attempt: int | None
    created_at: int


@dataclass(slots=True)
class WaitRow:
    """A pending `wait_for_event` (kind `wait`) or `cancel_on` rule (kind `cancel`).

    `match_key` is `"<path>=<json value>"` for waits with a `match`, so an incoming event is
    matched by index lookup; `expr` is the remaining condition, evaluated with `event` bound to
    `event_ctx` (the run's triggering event) and `async` to the incoming event.
    """

    run_id: str
    kind: str
    event_name: str
    expires_at: int | None
    step_hash: str | None = None
    match_key: str | None = None
    expr: str | None = None
    event_ctx: dict[str, Any] | None = None
    id: int = 0


@dataclass(slots=True, frozen=True)
class RunQuery:
    """What `Tx.search_runs` selects: every field given must hold (see `store.run_search`).

    `doing` is what an active run is doing (a key of `run_search.DOING`: `sleeping`,
    `waiting`, `invoking`, `retrying`, `orphaned`), judged at `now`. `before` is a cursor:
    only runs strictly older than this (created_at, id), so pages are stable under inserts.
    """

    function_ids: tuple[str, ...] = ()
    statuses: tuple[RunStatus, ...] = ()
    doing: str | None = None
    now: int = 0
    run_id: str | None = None
    event_id: str | None = None
    created_from: int | None = None         # inclusive
    created_until: int | None = None        # exclusive
    before: tuple[int, str] | None = None
    limit: int = 100


@dataclass(slots=True)
class RunWork:
    """What an active run waits on, outside its memos (`Tx.run_work`): its exec item (when it
    runs next, whether a worker holds it, whether it is parked on a full concurrency key and
    which keys it holds), its pending waits, and the child runs it invoked (id, function,
    status, the parent's step hash)."""

    due_at: int | None = None
    leased: bool = False
    blocked: bool = False
    concurrency: list[tuple[str, int]] = field(default_factory=list)
    waits: list[WaitRow] = field(default_factory=list)
    children: list[tuple[str, str, str, str | None]] = field(default_factory=list)


@dataclass(slots=True)
class RunState:
    """What an executor needs to replay a run."""

    run: RunRow
    events: list[Event]
    memos: dict[str, Memo] = field(default_factory=dict)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class WorkerRow:
    """A live worker process serving one version of an app (the worker registry): one row per
    (worker, app, version); `heartbeat_at` (wall-clock ms) is renewed while it runs, and a row
    not renewed for long enough is expired (`expire_workers`): its process is dead."""

    id: str                  # the worker's lease owner name (host:pid:random)
    app_id: str
    version: str
    host: str
    pid: int
    started_at: int
    heartbeat_at: int


@dataclass(slots=True, frozen=True)
class ClaimVersions:
    """Which exec items a versioned worker may claim (`claim_due`, `claim_timers`): those of
    runs with no recorded version, or whose (function id, version) is in `own` (this worker's
    code) or in `adopt` (runs of an `upgrade="auto"` function whose version has no live
    worker, that it may take over once the replay check passes), except the runs in `refused`
    (their check failed here). Other kinds of item (cron, timeouts, flow control, routing) are
    claimed whatever the version."""

    own: tuple[tuple[str, str], ...]
    adopt: tuple[tuple[str, str], ...] = ()
    refused: tuple[str, ...] = ()

    def own_keys(self) -> list[str]:
        """`own` as the claim SQL compares it: function id, unit separator (U+001F), version."""
        return [f"{fn}\x1f{version}" for fn, version in self.own]

    def adopt_keys(self) -> list[str]:
        """`adopt`, as `own_keys`."""
        return [f"{fn}\x1f{version}" for fn, version in self.adopt]


class Tx(Protocol):
    """One transaction. All methods are synchronous; the backend runs them on its own thread.

    Each method's docstring is its contract, checked on every backend by the contract suite
    (tests/store/test_tx_contract_*.py): a new backend is done when that suite passes. Times
    are epoch milliseconds; "free" means not leased, "ready" free, not blocked and due.
    """

    # --- events --------------------------------------------------------------------------
    def insert_event(self, event: Event, received_at: int, dedupe_after: int,
                     processed: bool, generation: int = 0) -> bool:
        """Store an event received at `received_at`. Insert-once by id within a window: if an
        event with this id was stored after `dedupe_after`, nothing is written and the answer
        is False; one stored at or before it is replaced (new fields and arrival time).
        `generation`: how many run-sent events led to it (0 for ingested events)."""

    def event_generation(self, ids: Sequence[str]) -> int:
        """The highest `generation` among the stored events `ids`; 0 if none is stored."""

    def mark_event_processed(self, event_id: str) -> bool:
        """Compare-and-set processed 0 -> 1; False if another worker processed it first (or
        there is no such event)."""

    def unprocessed_events(self, received_before: int, limit: int) -> list[Event]:
        """Up to `limit` events not yet processed that were received strictly before
        `received_before`, oldest first (recovery after a crash between store and process)."""

    def get_events(self, ids: Sequence[str]) -> list[Event]:
        """The stored events with these ids, in the order of `ids`; unknown ids are skipped."""

    def list_events(self, name: str | None, limit: int) -> list[tuple[Event, int]]:
        """Up to `limit` events (of `name` only, if given), newest received first, each with
        the time it was received."""

    # --- runs ----------------------------------------------------------------------------
    def insert_run(self, run: RunRow) -> None:
        """Insert a new run (its id is new: ids are ULIDs), every field as given (a run created
        `skipped` comes with its `ended_at`: the runtime decides that, see
        `scripts.record_unstarted_run`); a batched run is found by each of its events."""

    def start_run(self, run_id: str, now: int) -> bool:
        """queued/running -> running (sets started_at once); False if no longer active."""

    def finish_run(self, run_id: str, status: RunStatus, now: int, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> bool:
        """Active -> terminal status, with its end time, output and error: compare-and-set,
        False if it had already ended (or does not exist), and then nothing changes."""

    def add_run_warning(self, run_id: str, warning: str) -> None:
        """Append a warning to the run, once (a warning already there is not repeated); no-op
        for an unknown run."""

    def get_run(self, run_id: str) -> RunRow | None:
        """The run's row, or None."""

    def list_runs(self, *, event_id: str | None = None, function_id: str | None = None,
                  status: str | None = None, limit: int = 100) -> list[RunRow]:
        """Up to `limit` runs matching every filter given, newest first (created_at, then id,
        descending). `event_id` finds batched runs through any of their events."""

    def search_runs(self, query: RunQuery) -> list[RunRow]:
        """Up to `query.limit` runs matching every filter of `query`, newest first (created_at,
        then id, descending), in one statement: the runs list's page, whatever the filter."""

    def run_work(self, run_ids: Sequence[str]) -> dict[str, RunWork]:
        """What each of these runs waits on besides its memos (`RunWork`), keyed by run id;
        every id given is present (empty for a run with no item, wait or child)."""

    def load_run_state(self, run_id: str) -> RunState | None:
        """`load_run_states` for one run: its state, or None."""

    def load_run_states(self, run_ids: Sequence[str]) -> dict[str, RunState]:
        """Several runs' states in one consistent read, keyed by run id (ids not found are
        absent): the row, its events still stored (in the run's order), every memo by hash
        (pending ones with `pending=True` and no outcome) and failed attempts per step hash,
        in attempt order."""

    # --- steps ---------------------------------------------------------------------------
    def insert_memo(self, run_id: str, memo: Memo) -> bool:
        """Insert-if-absent: False if this step already has a memo (never overwritten)."""

    def resolve_memo(self, run_id: str, step_hash: str, outcome: dict[str, Any],
                     now: int) -> bool:
        """Compare-and-set a pending memo's outcome (`{"data": ...}` or `{"error": ...}`) and
        end time; False if it was already resolved, is not pending, or does not exist (an
        event and a timeout racing: exactly one wins)."""

    def insert_step_failure(self, run_id: str, step_hash: str, step_id: str, attempt: int,
                            error: dict[str, Any], at: int) -> None:
        """Record a failed attempt of a step, once per (run, step, attempt): a repeat of the
        same attempt (a script run again) keeps the first record."""

    def insert_model_usage(self, rows: Sequence[UsageRow]) -> None:
        """Record the tokens steps spent, once per (run, step, attempt, model): a repeat (a
        script run again) keeps the first record."""

    def run_model_usage(self, run_id: str) -> list[UsageRow]:
        """The run's usage rows, in the order they were recorded (time, then step)."""

    # --- durable streams ---------------------------------------------------------------------
    def publish_item(self, item: StreamItem, key: str | None) -> int:
        """Append `item` to its channel and return its offset (the channel's last + 1; the
        given `item.offset` is ignored). With a `key`, publishing again with the same key
        appends nothing and returns the first offset (a handler's publish, replayed)."""

    def read_stream(self, channel: str, after: int, limit: int) -> list[StreamItem]:
        """The channel's items with an offset above `after`, in order, at most `limit`."""

    def attempt_channels(self, run_id: str, step_id: str, attempt: int) -> list[str]:
        """The channels that attempt `attempt` of the run's step `step_id` published to (an
        execution that died mid-attempt leaves items the next one must retract)."""

    # --- queue ---------------------------------------------------------------------------
    def enqueue(self, kind: str, unique_key: str, due_at: int, *, run_id: str | None = None,
                payload: dict[str, Any] | None = None, owner: str | None = None,
                lease_until: int | None = None, priority_at: int | None = None,
                concurrency: Sequence[tuple[str, int]] = (),
                event_id: str | None = None) -> int | None:
        """Insert, or for an existing key move its due time earlier and, if it is leased, flag it
        to run again when its holder releases it. Returns the id if this call leased it to
        `owner`, else None (an item already leased, even to `owner` itself, is only flagged:
        its holder runs it again); an existing item with concurrency keys is never leased here (it
        must be claimed, which checks its slots). `priority_at` orders ready items (default:
        `due_at`); `concurrency` lists the (key, limit) slots the item holds while leased.

        An existing item keeps its id, kind, run, payload and event; its due time and priority
        only move earlier; a blocked one stays blocked (unleased); its timer flag is cleared.
        The rule is `store.queue_rules.merge_enqueue` (the SQL is generated next to it).
        `event_id`: an event the item holds back (kept from `prune` while the item exists)."""

    def claim_due(self, now: int, owner: str, lease_until: int, limit: int, *,
                  versions: ClaimVersions | None = None) -> list[QueueItem]:
        """Lease up to `limit` ready items (free, unblocked, due by `now`) to `owner` until
        `lease_until`, returned in priority order (`priority_at`, then id). Concurrency keys
        do not limit the claim: the caller decides which claimed items may hold their slots
        (`count_held`, `block_item`; see `runtime.admission.claim`). `versions`: only exec
        items of runs those allow (a versioned worker); None: any item (unchanged SQL)."""

    def claim_timers(self, until: int, owner: str, lease_until: int,
                     limit: int, *, versions: ClaimVersions | None = None) -> list[QueueItem]:
        """Lease up to `limit` timer items (see `release_item`) due by `until`, earliest first:
        the worker holds them in memory until they are due (prefetch). `versions`: as for
        `claim_due`."""

    def next_timer_at(self) -> int | None:
        """The due time of the earliest unleased timer item."""

    def count_held(self, key: str) -> int:
        """Leased items holding a slot of this concurrency key (as their first or second key).
        In a write, counting and then keeping or blocking the claimed items is atomic across
        workers (a concurrent claimer of the key waits, then counts these)."""

    def slots_free_now(self, concurrency: Sequence[tuple[str, int]], now: int) -> bool:
        """Whether an item holding these (key, limit) slots may be leased at once, ahead of no
        one: every key has fewer leased holders than its limit (`count_held`) and no unleased
        item on it (blocked, or ready and not yet claimed) is due by `now`. Items this
        transaction wrote count. In a write it is atomic with the insert that follows (a
        leased `enqueue`), across workers; on a backend with concurrent writers a key that
        another transaction is deciding on right now answers False at once rather than
        waiting (the item then queues, and the claim decides). Used by the fast path of new
        concurrency-limited runs (`runtime.scripts.create_run`)."""

    def block_item(self, item_id: int, owner: str) -> None:
        """Park a claimed item until a slot of one of its keys frees (FIFO per key): it is
        unleased, and neither claimable nor counted ready until woken. No-op unless `owner`
        holds it."""

    def unblock_all(self) -> int:
        """Let every blocked item be reconsidered (a safety net against a missed wake-up);
        returns how many were blocked."""

    def get_item(self, unique_key: str) -> QueueItem | None:
        """The item with this key (with its current `owner`), or None. In a write, the key is
        serialized: a concurrent read-then-update of the same key (debounce, batch) waits."""

    def delete_item(self, item_id: int) -> None:
        """Delete an item whoever holds it; slots it held are freed (waking as
        `release_item` does)."""

    def update_item(self, item_id: int, due_at: int, payload: dict[str, Any],
                    event_id: str | None = None) -> None:
        """Set an item's due time (and priority, to the same) and replace its payload and the
        event it holds back."""

    def get_flow(self, key: str) -> tuple[str | None, int | None] | None:
        """Flow-control state stored under a key: (value, expiry), or None. In a write, the
        key is serialized until commit: callers read, decide, then `put_flow`."""

    def put_flow(self, key: str, *, text: str | None = None,
                 expires_at: int | None = None) -> None:
        """Store (replace) the state under a key; `prune` deletes it once `expires_at` passed."""

    def held_windows(self, function_id: str, limit: int) -> list[HeldWindow]:
        """Up to `limit` pending batch and debounce windows of the function with this qualified
        id (`HeldWindow`), in key order (batches first); a function whose id extends this one
        (`fn` and `fn:x`) is not mixed in. One walk of the queue's flow-window index."""

    def add_batch_event(self, batch_key: str, event_id: str) -> int:
        """Append an event to a pending batch; returns the batch's size."""

    def take_batch(self, batch_key: str) -> list[str]:
        """Remove and return a batch's event ids, oldest first."""

    def renew_lease(self, item_id: int, owner: str, lease_until: int) -> bool:
        """Compare-and-set on the owner: False means the lease was lost (or the item deleted)."""

    def renew_leases(self, owner: str, lease_until: int, item_ids: Sequence[int]) -> int:
        """Extend the leases `owner` still holds among `item_ids` (the items its live sessions
        work on: an item whose session died is not renewed, so its lease expires and the run
        is picked up again). Returns how many were extended."""

    def release_item(self, item_id: int, owner: str, due_at: int | None, now: int, *,
                     timer: bool = False) -> bool:
        """Give back a leased item: delete it (`due_at` None) or re-arm it for `due_at`; if it was
        flagged to run again meanwhile, re-arm it for `now` instead. False if not held. The
        concurrency slots it held are freed (waking the oldest item blocked on each).

        `timer`: only time can make the run need this item again (it sleeps or backs off), so
        it may be claimed ahead of `due_at` (`claim_timers`). Kept only for exec items without
        concurrency keys and not flagged to run again; `enqueue` on the key clears it."""

    def delete_items(self, *, run_id: str) -> None:
        """Delete every queue item of a run (it ended), freeing and waking their slots."""

    def release_expired_leases(self, wall_now: int) -> int:
        """Unlease every item whose lease ended strictly before `wall_now` (its worker stalled
        or died); returns how many. Their slots are freed and woken."""

    def lease_owners(self) -> list[str]:
        """The distinct owners holding leases now."""

    def release_leases_of(self, owner: str) -> int:
        """Release every item a (dead) worker holds; returns how many. Slots are woken."""

    def next_due_at(self) -> int | None:
        """The due time of the earliest free, unblocked item (due or not), or None."""

    def count_ready(self, now: int) -> int:
        """How many free, unblocked items are due by `now`."""

    def count_runs(self, function_id: str, status: RunStatus, cap: int) -> int:
        """How many runs of a function have `status`, counting at most `cap` (bounded work)."""

    def run_backlog(self, now: int) -> list[tuple[str, str | None, int, int]]:
        """The runs due by `now` that no worker holds (ready, or waiting for a concurrency
        slot), grouped by function and first concurrency key: (function id, key or None,
        how many, the earliest due time). For `/metrics`; one row per key in the backlog."""

    def active_versions(self) -> list[tuple[str, str | None, int, int]]:
        """The unfinished (queued or running) runs grouped by function and the version of the
        code they started on: (function id, version or None, how many, the oldest one's
        created_at), ordered by function then version. For `stepwell versions`."""

    def move_run_version(self, run_id: str, old: str | None, new: str) -> bool:
        """Compare-and-set an active run's version from `old` to `new` (it moved to newer
        code: `upgrade="auto"`); False if the run ended, is unknown or has another version."""

    # --- worker registry -------------------------------------------------------------------------
    def register_workers(self, rows: Sequence[WorkerRow]) -> None:
        """Insert or replace these registry rows (keyed by worker id, app and version)."""

    def heartbeat_worker(self, worker_id: str, now: int) -> int:
        """Renew every row of this worker to `now`; returns how many (0: it was expired as dead
        meanwhile, and must register again)."""

    def remove_workers(self, worker_ids: Sequence[str]) -> int:
        """Delete every row of these workers (stopped, or found dead); returns how many."""

    def expire_workers(self, heartbeat_before: int) -> int:
        """Delete the rows not renewed since `heartbeat_before` (their process died or hung);
        returns how many."""

    def list_workers(self) -> list[WorkerRow]:
        """Every registered worker row, by app, version, then started_at and id."""

    # --- retention -------------------------------------------------------------------------------
    def prune(self, ended_before: int, now: int, limit: int) -> tuple[int, int, int]:
        """Delete up to `limit` finished runs that ended before `ended_before` (with their
        steps), up to `limit` processed events received before it that no run, batch or queue
        item (`QueueItem.event_id`: a debounce's event) still refers to, and up to `limit`
        expired flow-control entries. Returns the three counts. Safe to run from several
        processes at once."""

    # --- apps (official-SDK apps) ---------------------------------------------------------------
    def save_app(self, app_id: str, url: str, config: dict[str, Any], checksum: str,
                 now: int) -> bool:
        """Store an app's latest registration; True if it changed (checksum differs)."""

    def list_apps(self) -> list[tuple[str, str, dict[str, Any], str]]:
        """(app id, url, registration body, checksum) of every synced app, by app id."""

    # --- waits ---------------------------------------------------------------------------
    def insert_wait(self, wait: WaitRow) -> None:
        """Register a pending wait or cancel rule (its `id` is assigned here)."""

    def match_paths(self, event_name: str) -> list[str]:
        """Distinct `match` paths among pending waits for this event name."""

    def find_waits(self, event_name: str, match_keys: Sequence[str]) -> list[WaitRow]:
        """Pending waits for the name whose match_key is one of `match_keys` or is null, oldest
        first (by id). Expiry is the caller's to check."""

    def delete_wait(self, wait_id: int) -> bool:
        """Compare-and-set delete: False if another event (or a timeout) took it first."""

    def delete_step_wait(self, run_id: str, step_hash: str) -> bool:
        """Delete the waits of one step of a run (its timeout resolved it); True if any."""

    def delete_run_waits(self, run_id: str) -> None:
        """Delete every wait and cancel rule of a run (it ended)."""


class Store(Protocol):
    """An opened storage backend."""

    url: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, script: Callable[[Tx], R]) -> R:
        """Run `script` in a write transaction, possibly grouped with others."""

    async def read(self, script: Callable[[Tx], R]) -> R:
        """Run `script` against a consistent read-only snapshot."""

    def pending_writes(self) -> int:
        """Scripts submitted but not yet committed (for idle detection)."""


def migration_files(dialect: str) -> list[tuple[int, str]]:
    """(version, SQL) of a backend's versioned migrations, in order (`NNNN_name.sql`)."""
    folder = resources.files("stepwell.store") / "migrations" / dialect
    return sorted((int(entry.name.split("_", 1)[0]), entry.read_text())
                  for entry in folder.iterdir() if entry.name.endswith(".sql"))


def pending_migrations(dialect: str, current: int) -> tuple[int, list[str]]:
    """What a database at schema version `current` (0: empty) needs: the version it will be at
    and the SQL of each migration after `current`, in order. A database written by a newer
    stepwell is refused (StoreError), on every backend with the same words."""
    migrations = migration_files(dialect)
    latest = migrations[-1][0]
    if current > latest:
        raise StoreError(
            f"this database has schema version {current}, written by a newer stepwell; "
            f"this stepwell knows up to version {latest}: upgrade stepwell")
    return latest, [sql for version, sql in migrations if version > current]


class StoreError(StorageFailure):
    """The database is unreachable, corrupt, or from an incompatible stepwell version."""
