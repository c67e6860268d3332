"""Feed events into the events topic: from the offline CSV, a JSONL file, or a simulation.

Keyed by video_id (so a video always lands in one partition and the worker needs no
repartitioning), in file order, optionally paced to a rate. Used by the demo, the tests,
the compose ``replay`` service and by users feeding their own data.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator

from aiokafka import AIOKafkaProducer

from stream_detector.config import Settings
from stream_detector.series import METRICS, InputError, parse_time

log = logging.getLogger("stream_detector.dev.replay")


def events_from_csv(path: str) -> Iterator[tuple[str, bytes]]:
    """(key, value) per CSV row, in the event contract's JSON shape."""
    try:
        fh = open(path, newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("video_id", "ts", *METRICS) if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                event: dict = {"video_id": row["video_id"], "ts": parse_time(row["ts"])}
                for m in METRICS:
                    if row.get(m):
                        event[m] = int(float(row[m]))
            except (InputError, ValueError) as exc:
                raise InputError(f"{path}:{line}: {exc}") from None
            if row.get("published_at"):
                event["published_at"] = row["published_at"]
            yield row["video_id"], json.dumps(event, separators=(",", ":")).encode()


def events_from_jsonl(path: str) -> Iterator[tuple[str | None, bytes]]:
    """Lines are sent verbatim (invalid ones too: the worker dead-letters them)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}") from None
    with fh:
        for raw in fh:
            raw = raw.rstrip(b"\r\n")
            if not raw:
                continue
            key = None
            try:
                obj = json.loads(raw)
                if isinstance(obj, dict) and isinstance(obj.get("video_id"), str):
                    key = obj["video_id"]
            except ValueError:
                pass
            yield key, raw


def events_from_simulation(videos: int, seed: int) -> Iterator[tuple[str, bytes]]:
    from stream_detector.dev.simulate import simulate

    data = simulate(videos, seed=seed)
    for e in data.iter_events():
        yield e["video_id"], json.dumps(e, separators=(",", ":")).encode()


async def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[tuple[str | None, bytes]],
    *,
    rate: float = 0.0,
    progress_every: int = 0,
) -> int:
    """Send every event (awaiting delivery in chunks); returns the count sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=256 * 1024, acks="all")
    await producer.start()
    sent = 0
    t0 = time.monotonic()
    pending = []
    try:
        for key, value in events:
            pending.append(await producer.send(topic, value=value, key=key.encode() if key else None))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
            if progress_every and sent % progress_every == 0:
                log.info("replayed %d events (%.0f/s)", sent, sent / max(time.monotonic() - t0, 1e-9))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def run_replay(path: str | None, *, simulate: int | None = None, rate: float = 0.0, seed: int = 1) -> int:
    from stream_detector.topics import ensure_topics

    settings = Settings.from_env()
    if not settings.kafka_bootstrap_servers:
        sys.stderr.write("stream-detector: error: set KAFKA_BOOTSTRAP_SERVERS to the broker to replay into\n")
        return 2
    try:
        if simulate:
            events: Iterable = events_from_simulation(simulate, seed)
        elif path and path.endswith(".jsonl"):
            events = events_from_jsonl(path)
        elif path:
            events = events_from_csv(path)
        else:
            raise InputError("replay needs a FILE or --simulate N")

        async def go() -> int:
            await ensure_topics(settings.kafka_bootstrap_servers, {settings.events_topic: settings.topic_partitions})
            return await produce(settings.kafka_bootstrap_servers, settings.events_topic, events, rate=rate, progress_every=50_000)

        n = asyncio.run(go())
    except InputError as exc:
        sys.stderr.write(f"stream-detector: error: {exc}\n")
        return 2
    sys.stderr.write(f"replayed {n} events into {settings.events_topic}\n")
    return 0
