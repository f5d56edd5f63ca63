"""One driver per storage study on any machine: a lease object in the store, taken and renewed by conditional writes,
and a fence number that a driver which lost the study cannot write past."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from study.store import patient_store
from study.store.patient_store import patiently

LEASE_FILE = "driver.lease"  # in the study's folder of its storage, beside Tune's state and the tables
# A driver that has not renewed its lease for this long is gone (killed, its machine lost or cut off): another
# driver may take the study over. Long enough for a loaded machine's renewals, short enough to resume within a coffee.
DEFAULT_LEASE_S = 60.0
LEASE_LIMITS_S = (5.0, 3600.0)
RENEWALS_PER_LEASE = 5  # renewed every lease/5; the holder writes only within 80 % of a lease since its last renewal
# The store's answers that mean "the condition did not hold": another writer got there first.
CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class LeaseHeld(RuntimeError):
    """Another live driver holds the study; the message names it."""


class FencedOut(PermissionError):
    """This process's driver lost the study's lease: it may not write to the study any more (never retried)."""


class ConditionsIgnored(RuntimeError):
    """The store does not honour conditional writes: it cannot keep two drivers apart."""


def lease_seconds() -> float:
    """The lease a driver takes (CVAE_LEASE_SECONDS, default 60 s); ValueError names what is allowed."""
    from cvae.environment import LEASE_ENV

    text = os.environ.get(LEASE_ENV)
    if not text:
        return DEFAULT_LEASE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    low, high = LEASE_LIMITS_S
    if not low <= seconds <= high:
        raise ValueError(f"{LEASE_ENV}={text!r} must be a number of seconds from {low:.0f} to {high:.0f}")
    return seconds


class Found(NamedTuple):
    """A lease as the store holds it."""

    content: dict
    etag: str
    age: float  # seconds since it was written, by the store's own clock


def _is_condition_failed(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code in CONDITION_FAILED or status in CONDITION_FAILED


class _Objects:
    """The few S3 requests a lease needs, through boto3 (pyarrow cannot send If-None-Match or If-Match). Errors that
    mean "not now" become OSErrors that patient_store retries; every other answer stands."""

    def __init__(self, uri: str):
        import boto3
        import botocore.config

        from cvae.environment import ENDPOINT_ENV

        parts = urllib.parse.urlsplit(uri)
        query = dict(urllib.parse.parse_qsl(parts.query))
        endpoint = query.get("endpoint_override")
        endpoint_url = f"{query.get('scheme', 'https')}://{endpoint}" if endpoint else os.environ.get(ENDPOINT_ENV)
        config = botocore.config.Config(connect_timeout=patient_store.CONNECT_TIMEOUT_S,
                                        read_timeout=patient_store.REQUEST_TIMEOUT_S, retries={"max_attempts": 1})
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config,
                                   region_name=query.get("region") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def call(self, method: str, what: str, **arguments):
        """One request, retried while the store does not answer (as every other request of the study)."""
        import botocore.exceptions

        def request():
            try:
                return getattr(self.client, method)(Bucket=self.bucket, **arguments)
            except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                    botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as error:
                raise ConnectionError(f"couldn't connect: {error}") from None
            except botocore.exceptions.ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status >= 500 or error.response.get("Error", {}).get("Code") == "SlowDown":
                    raise OSError(f"{status} {error}") from None
                raise

        return patiently(request, what)

    def read(self, key: str) -> Found | None:
        """A JSON object with its ETag and age, or None when there is none."""
        import botocore.exceptions

        try:
            answer = self.call("get_object", f"reading {key}", Key=key)
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        try:
            content = json.loads(answer["Body"].read())
        except ValueError:
            content = {}  # a damaged lease names no holder; it still ages and can be taken over
        date = answer["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = email.utils.parsedate_to_datetime(date) if date else None
        age = (now - answer["LastModified"]).total_seconds() if now else 0.0
        return Found(content, answer["ETag"], max(age, 0.0))

    def write(self, key: str, content: dict, *, create: bool = False, replacing: str | None = None) -> str:
        """Put a JSON object only if there is none (`create`) or only if it is still `replacing` (an ETag);
        returns the new ETag. A condition that did not hold raises botocore's ClientError."""
        condition = {"IfNoneMatch": "*"} if create else {"IfMatch": replacing} if replacing else {}
        answer = self.call("put_object", f"writing {key}", Key=key, Body=json.dumps(content).encode(),
                           ContentType="application/json", **condition)
        return answer["ETag"]


def honours_conditional_writes(uri: str) -> bool:
    """Whether the store at `uri` refuses a second create with If-None-Match and a replace with a stale If-Match
    (a store that ignores them would let two drivers each believe they hold the study)."""
    import botocore.exceptions

    objects = _Objects(uri)
    key = objects.key(f".conditional-write-probe-{uuid.uuid4().hex[:12]}")
    try:
        objects.write(key, {"probe": 1}, create=True)
        for condition in ({"create": True}, {"replacing": '"0123456789abcdef0123456789abcdef"'}):
            try:
                objects.write(key, {"probe": 2}, **condition)
                return False
            except botocore.exceptions.ClientError as error:
                if not _is_condition_failed(error):
                    return False  # e.g. 501 NotImplemented: the header is not understood
        return True
    finally:
        try:
            objects.call("delete_object", f"deleting {key}", Key=key)
        except Exception:  # noqa: BLE001 (a probe left behind is a few bytes)
            pass


@dataclass(frozen=True)
class Fence:
    """What every writer of a study carries (Tune's checkpoint uploads in the trials, the driver's state and tables):
    the lease's path in its file system and the fence number its driver took. A write checks it first: in the
    driver against the lease it holds (no request while the lease is fresh), in a trial against the lease in the
    store (one small read), so a driver that lost the study — and its trials — stop writing to it."""

    path: str  # the lease object within its pyarrow file system: bucket/key
    number: int

    def check(self, filesystem, what: str) -> None:
        """Raise FencedOut when this fence's driver no longer holds the study."""
        held = _HELD
        if held is not None and held.fence == self.number:
            held.ensure_held(what)
            return
        with filesystem.open_input_stream(self.path) as stream:
            try:
                number = json.loads(stream.read()).get("fence")
            except ValueError:
                number = None
        if number != self.number:
            raise FencedOut(f"not {what}: the study was taken over by another driver (fence {number}, this "
                            f"driver's {self.number})")


_HELD: "Lease | None" = None  # the lease this process's driver holds (one study per driver)


class Lease:
    """The study's lease object (`<study>/driver.lease`): {host, pid, since, fence, lease_s}, created with
    If-None-Match: * and renewed with If-Match: <its ETag> every lease/5 by a thread. Another driver refuses to start
    while the lease is younger than its lease_s by the store's own clock (its Date against the object's
    Last-Modified: no two machines' clocks compared); an older one, a released one, or any with `take_over`, it
    replaces with If-Match on the ETag it read and the fence number plus one. The holder writes only within 80 %
    of a lease after the start of its last successful renewal, renewing first when it is older, so it never writes
    after another driver could have taken over; a renewal refused because the ETag changed means the study was
    taken over: `on_lost` is called once (the driver stops as on Ctrl-C)."""

    def __init__(self, study_uri: str, seconds: float | None = None, on_lost=None):
        self.objects = _Objects(study_uri)
        self.key = self.objects.key(LEASE_FILE)
        self.seconds = lease_seconds() if seconds is None else seconds
        self.on_lost = on_lost
        self.fence, self.etag, self.content = 0, None, {}
        self.fresh_until = 0.0
        self.lost: str | None = None
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """The lease's path as pyarrow's S3 file system names it (bucket/key)."""
        return f"{self.objects.bucket}/{self.key}"

    def _content(self, fence: int) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "fence": fence, "lease_s": self.seconds}

    def acquire(self, take_over: bool = False) -> "Lease":
        """Take the study's lease (raises LeaseHeld naming the live holder) and start renewing it."""
        import botocore.exceptions

        global _HELD
        for _ in range(3):  # another driver may take or renew it between our read and our write
            found = self.objects.read(self.key)
            try:
                if found is None:
                    content, sent = self._content(1), time.monotonic()
                    self.etag = self.objects.write(self.key, content, create=True)
                else:
                    current = found.content
                    if not (take_over or current.get("released") or found.age >= float(current.get("lease_s", 0))):
                        raise LeaseHeld(describe_holder(found))
                    content, sent = self._content(int(current.get("fence") or 0) + 1), time.monotonic()
                    self.etag = self.objects.write(self.key, content, replacing=found.etag)
            except botocore.exceptions.ClientError as error:
                if _is_condition_failed(error):
                    continue
                raise
            self.content, self.fence = content, content["fence"]
            self.fresh_until = sent + self.seconds * (1 - 1 / RENEWALS_PER_LEASE)
            _HELD = self
            patient_store.FENCE = Fence(self.path, self.fence)
            self.thread = threading.Thread(target=self._keep, name="study-lease", daemon=True)
            self.thread.start()
            return self
        found = self.objects.read(self.key)
        raise LeaseHeld(describe_holder(found) if found else "the study's lease changes hands too often")

    def renew(self) -> None:
        """Replace the lease by the same holder (If-Match: its ETag); FencedOut when another driver took it."""
        import botocore.exceptions

        with self.lock:
            if self.lost:
                raise FencedOut(self.lost)
            sent = time.monotonic()
            try:
                self.etag = self.objects.write(self.key, self.content, replacing=self.etag)
            except botocore.exceptions.ClientError as error:
                if not _is_condition_failed(error):
                    raise
                found = self.objects.read(self.key)
                if found and found.content == self.content:  # our own renewal went through, its answer was lost
                    self.etag = found.etag
                else:
                    self._lose(found)
                    raise FencedOut(self.lost) from None
            self.fresh_until = sent + self.seconds * (1 - 1 / RENEWALS_PER_LEASE)

    def _lose(self, found) -> None:
        holder = describe_holder(found) if found else "its lease object was deleted"
        self.lost = f"this driver lost the study to another driver: {holder}"
        if self.on_lost is not None:
            self.on_lost(self.lost)

    def ensure_held(self, what: str) -> None:
        """Return only while this driver surely holds the study (renewing first if the lease is not fresh)."""
        if self.lost:
            raise FencedOut(f"not {what}: {self.lost}")
        if time.monotonic() < self.fresh_until:
            return
        try:
            self.renew()
        except FencedOut:
            raise FencedOut(f"not {what}: {self.lost}") from None

    def _keep(self) -> None:
        while not self.stop.wait(self.seconds / RENEWALS_PER_LEASE):
            try:
                self.renew()
            except FencedOut:
                return
            except Exception as error:  # noqa: BLE001 (a store away past the retries: writes wait on ensure_held)
                print(f"warning: the study's lease could not be renewed ({' '.join(str(error).split())[:120]}); "
                      "retrying", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Stop renewing and mark the lease released (If-Match, keeping its fence number for the next holder)."""
        global _HELD
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=patient_store.REQUEST_TIMEOUT_S)
        if _HELD is self:
            _HELD = None
            patient_store.FENCE = None
        with self.lock:
            if self.lost or self.etag is None:
                return
            try:
                self.objects.write(self.key, {**self.content, "released": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
                                   replacing=self.etag)
            except Exception:  # noqa: BLE001 (not released: it runs out after lease_s)
                pass
            self.etag = None


def describe_holder(found: Found) -> str:
    """One line naming a lease's holder and when it runs out."""
    content, age = found.content, found.age
    seconds = float(content.get("lease_s") or 0)
    who = f"pid {content.get('pid', '?')} on {content.get('host', '?')}, since {content.get('since', '?')}"
    return (f"held by a driver ({who}; renewed {age:.0f} s ago: if that driver is gone, its lease runs out in "
            f"{max(seconds - age, 0):.0f} s)")
