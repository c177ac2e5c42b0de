"""Claims: two machines that share only the team's remote never pay for one node.

Before a paid render, a runner creates `<remote>/claims/ab/<key>.json` only if it is absent
(an atomic conditional create). The claim names its holder (host, pid, a random run id; never a
secret) and, once the provider answers, the job id. Another runner that finds a live claim waits
for the node's record to appear on the remote and adopts it, instead of paying. The holder
refreshes its claim every `refresh` seconds; one not refreshed for `lease` seconds (or whose
holder process is gone from this host) belongs to a dead runner and is taken over: of several
takers, the one that creates the marker `<key>.json.taken-<run>` wins, and the caller resumes the
job the claim names (free) before it sends anything. The claim goes once the output and record
are pushed; while a paid job is outstanding and not pushed it stays, to expire and be taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.cache.remote import Remote, RemoteError
from runner.errors import NodeFailed, UserError

CLAIM_VERSION = 1
LEASE = 600.0  # seconds without a heartbeat after which a claim's holder counts as dead
REFRESH = 60.0  # seconds between heartbeats
WAIT_CAP = 5.0  # seconds: the longest wait between two looks at the remote
ENV_LEASE = "RUNNER_CLAIM_LEASE_SECONDS"
ENV_REFRESH = "RUNNER_CLAIM_REFRESH_SECONDS"


@dataclass
class Taken:
    """A claim now held; `previous` is the dead holder's claim when it was taken over."""

    previous: dict[str, Any] | None


class Claims:
    """This run's claims on one remote, kept alive by one heartbeat thread."""

    def __init__(
        self,
        remote: Remote,
        lease: float = LEASE,
        refresh: float = REFRESH,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.remote = remote
        self.lease = lease
        self.refresh = refresh
        self.clock = clock
        self.sleep = sleep
        self.me = {"run": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._held: dict[str, dict[str, Any]] = {}  # key -> the claim's body
        self._markers: dict[str, str] = {}  # key -> the takeover marker this run created
        self._lock = threading.Lock()
        self._io = threading.Lock()  # a heartbeat never rewrites a claim being released
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(
        self, key: str, node_id: str, ready: Callable[[], bool], stopping: Callable[[], bool]
    ) -> Taken | None:
        """Hold the claim on key, waiting while a live runner holds it; None when the node's
        output appeared meanwhile (ready() adopted it)."""
        seen: bytes | None = None
        seen_at = time.monotonic()
        wait = 0.2
        told = False
        while True:
            body = self._body(key, node_id)
            created, raw = self._create(f"{key}.json", body)
            if created:
                self._hold(key, body if raw is None else _decode(raw))
                if ready():  # made and pushed by a holder that released just before
                    self.release(key)
                    return None
                return Taken(None)
            if ready():
                return None
            if raw is None:
                continue  # released without an output (the render failed): claim it
            if raw != seen:
                seen, seen_at = raw, time.monotonic()
            current = _decode(raw)
            if self._stale(current, seen_at):
                marker = f"{key}.json.taken-{current.get('run', 'unknown')}"
                if self._create(marker, body)[0]:
                    self.remote.write_claim(f"{key}.json", _encode(body))
                    with self._lock:
                        self._markers[key] = marker
                    self._hold(key, body)
                    return Taken(current)
            elif not told:
                told = True
                who = f"{current.get('host', '?')} (pid {current.get('pid', '?')})"
                print(
                    f"runner: {node_id}: {who} is rendering it; waiting for its output on the "
                    "team's cache instead of paying again",
                    file=sys.stderr,
                )
            if stopping():
                raise NodeFailed(f"{node_id}: not waited for: the run is stopping")
            self.sleep(wait)
            wait = min(wait * 2, WAIT_CAP, self.lease / 4)

    def note_job(self, key: str, job_id: str) -> None:
        """Name the provider's job in the claim, so a taker resumes it instead of paying."""
        with self._io:
            with self._lock:
                body = self._held.get(key)
                if body is None:
                    return
                body["job_id"] = job_id
            self._put(key, body)

    def release(self, key: str) -> None:
        """Let go: the output and record are on the remote, or nothing was paid."""
        with self._io:
            with self._lock:
                body = self._held.pop(key, None)
                marker = self._markers.pop(key, None)
            try:
                if body is not None and self._ours(key):
                    self.remote.delete_claim(f"{key}.json")
                if marker is not None:
                    self.remote.delete_claim(marker)
            except RemoteError as err:
                print(f"runner: warning: {err}; the claim expires by itself", file=sys.stderr)

    def abandon(self, key: str) -> None:
        """Stop refreshing: a paid job is not pushed yet; whoever takes the claim over once it
        expires resumes the job it names."""
        with self._lock:
            self._held.pop(key, None)
            self._markers.pop(key, None)

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    # --- plumbing ------------------------------------------------------------------------

    def _body(self, key: str, node_id: str) -> dict[str, Any]:
        now = self.clock()
        return {"version": CLAIM_VERSION, "key": key, "node": node_id, **self.me,
                "claimed_at": now, "refreshed_at": now}  # fmt: skip

    def _create(self, name: str, body: dict[str, Any]) -> tuple[bool, bytes | None]:
        """Create claims/<name> holding body. (True, None): created. (True, raw): refused, but
        what is there names this run: our own create, whose answer was lost and which gcsfs or
        botocore re-sent (the store refused the copy), not a live holder to wait for. (False,
        raw): another runner's claim, or None when it went meanwhile."""
        if self.remote.create_claim(name, _encode(body)):
            return True, None
        raw = self.remote.read_claim(name)
        return raw is not None and _decode(raw).get("run") == self.me["run"], raw

    def _hold(self, key: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._held[key] = body
            if self._beat is None:
                self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="claims")
                self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.refresh):
            with self._lock:
                held = list(self._held.items())
            for key, body in held:
                with self._io:
                    if key not in self._held:
                        continue  # released meanwhile
                    if self._ours(key):
                        body["refreshed_at"] = self.clock()
                        self._put(key, body)
                    else:  # taken over while this run looked dead: the taker holds it now
                        self.abandon(key)

    def _put(self, key: str, body: dict[str, Any]) -> None:
        try:
            self.remote.write_claim(f"{key}.json", _encode(body))
        except RemoteError as err:  # never fails a paid job; the claim may expire
            print(f"runner: warning: {err}", file=sys.stderr)

    def _ours(self, key: str) -> bool:
        try:
            raw = self.remote.read_claim(f"{key}.json")
        except RemoteError:
            return True
        return raw is not None and _decode(raw).get("run") == self.me["run"]

    def _stale(self, claim: dict[str, Any], seen_at: float) -> bool:
        """Its holder is dead: no heartbeat for a lease (by its clock, or by ours while we
        watched it unchanged), or it was a process of this host that is gone."""
        if time.monotonic() - seen_at > self.lease:
            return True
        refreshed = claim.get("refreshed_at")
        if isinstance(refreshed, int | float) and self.clock() - refreshed > self.lease:
            return True
        pid = claim.get("pid")
        if claim.get("host") == self.me["host"] and isinstance(pid, int) and pid > 0:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except OSError:
                return False
        return False


def claims_from_config(
    remote: Remote | None, tool_config: Mapping[str, Any], env: Mapping[str, str]
) -> Claims | None:
    """Claims on the team's remote ([tool.runner] claim_lease_seconds and
    claim_refresh_seconds; RUNNER_CLAIM_LEASE_SECONDS and RUNNER_CLAIM_REFRESH_SECONDS win);
    None without a remote or on a store that cannot create a file only if it is absent."""
    if remote is None or not remote.claims_supported:
        return None
    lease = _seconds(tool_config, env, "claim_lease_seconds", ENV_LEASE, LEASE)
    refresh = _seconds(tool_config, env, "claim_refresh_seconds", ENV_REFRESH, REFRESH)
    if refresh >= lease:
        raise UserError(
            f"claim_refresh_seconds ({refresh:g}) must be less than claim_lease_seconds "
            f"({lease:g}): a live holder must refresh its claim before it expires"
        )
    return Claims(remote, lease, refresh)


def _seconds(
    config: Mapping[str, Any], env: Mapping[str, str], name: str, var: str, default: float
) -> float:
    raw: Any = env[var] if env.get(var, "").strip() else config.get(name, default)
    where = var if env.get(var, "").strip() else f"[tool.runner] {name}"
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if isinstance(raw, bool) or not value > 0 or value == float("inf"):
        raise UserError(f"{where} must be a positive number of seconds, not {raw!r}")
    return value


def _encode(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def _decode(raw: bytes) -> dict[str, Any]:
    """A claim's body; one that does not read (a newer runner's, damaged) still counts as a
    claim, with no heartbeat we can read: it expires after a lease of our own watching."""
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
