"""Publishes what the decision process decides, and owns its per-video memory in Redis.

For a batch of scored videos: read their decision states (one MGET), run the decision
(``decision.StreamDecision``), send the records (new / updated / withdrawn) to the flags
topic, wait for the broker's acknowledgements, then write the new states (one script call).
State is written after the send, never before: a crash in between re-sends the same record
with the same ``flag_id`` (consumers de-duplicate on it) instead of losing it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import msgspec
import numpy as np
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from stream_detector import redis_client
from stream_detector.decision import Published, StreamDecision, VideoDecisionState
from stream_detector.flags import build_record
from stream_detector.metrics import Metrics
from stream_detector.models import ModelArtifact
from stream_detector.moderation import VerdictBook, moderate, verdict_words
from stream_detector.patterns import Burst
from stream_detector.scoring import VideoScore
from stream_detector.series import hour_start_iso
from stream_detector.windows import MINUTE_SLOTS

log = logging.getLogger("stream_detector.publisher")


def _plain(obj: object) -> object:
    """numpy scalars as Python numbers (msgspec encodes no float or int subclass by itself)."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


JSON_ENCODER = msgspec.json.Encoder(enc_hook=_plain)
"""For the per-video documents (decision states, latest scores): one per scored video."""


_NOTHING = VideoDecisionState()  # what a missing state key means (``decide`` starts from it)


@dataclass
class Scored:
    """One video's scoring, ready for a decision."""

    score: VideoScore
    now_hour: int
    burst: Burst | None = None
    arrival_ms: float = 0.0
    accounts: dict[int, tuple[int, int]] | None = None  # hour -> (account actions, flagged accounts' actions)
    account_groups: list[dict] | None = None  # the groups of the flagged accounts that engaged it


def accounts_doc(windows, hours: dict[int, tuple[int, int]] | None, groups: list[dict] | None = None) -> dict | None:
    """Who engaged in a record's hours (flag schema 1.2 ``accounts``), when known: the share of the
    hours' account actions that came from flagged accounts, and how many there were."""
    if not hours:
        return None
    total = flagged = 0
    for w in windows:
        for h in range(w.start_hour, w.end_hour):
            t, f = hours.get(h, (0, 0))
            total, flagged = total + t, flagged + f
    if not total:
        return None
    return {"flagged_share": round(min(flagged / total, 1.0), 4), "engaged": int(total), "groups": groups or []}


def explanation(rec: Published, scored: Scored, decision: StreamDecision) -> str:
    """One line for moderators: why this record."""
    vs, th = scored.score, decision.thresholds
    if rec.status == "withdrawn":
        first = min(w.start_hour for w in rec.windows)
        return (f"withdrawn: the evidence no longer holds; no flagged hour is above {th.withdraw:.2f} any more "
                f"(highest now {vs.score:.2f}); first flagged hour {hour_start_iso(first)}")
    burst = scored.burst
    if decision.fires(burst):
        minute = hour_start_iso(burst.minute // 60)[:-6] + f"{burst.minute % 60:02d}:00Z"
        against = (f"vs usual ~{burst.usual_hour:,.0f} per hour" if burst.ring_views < 0 else
                   f"with {burst.ring_views:,} views in the last {MINUTE_SLOTS} minutes (no usual level yet)")
        line = (f"spike at {minute}: {'/'.join(burst.metrics)} {burst.peak:,} in one minute {against}; "
                f"burst evidence {burst.evidence:.2f}")
        others = [w for w in rec.windows if not (w.start_hour <= burst.minute // 60 < w.end_hour)]
        return line + (f"; {len(others)} more window(s)" if others else "")
    shown = [w for w in rec.windows if w.start_hour >= vs.start_hour] or list(rec.windows)
    top = max(shown, key=lambda w: w.score)
    if "coordinated_accounts" in top.patterns and scored.accounts:
        t = sum(scored.accounts.get(h, (0, 0))[0] for h in range(top.start_hour, top.end_hour))
        f = sum(scored.accounts.get(h, (0, 0))[1] for h in range(top.start_hour, top.end_hour))
        groups = f" (groups {', '.join(g['group_id'] for g in scored.account_groups[:3])})" if scored.account_groups else ""
        return (f"coordinated_accounts at {hour_start_iso(top.start_hour)} for {top.end_hour - top.start_hour} h: "
                f"{f:,} of {t:,} account actions by flagged accounts{groups}; score {top.score:.2f}"
                + (f"; {len(shown) - 1} more window(s)" if len(shown) > 1 else ""))
    return vs.explain(shown, th.publish)


# a video's decision state (standing flag, generation, withdrawals) outlives its window's idle
# TTL: a video quiet for a week that comes back must not re-publish a standing flag as new.
# Serving and shadow models keep it equally long, so their flag rates compare like for like.
FLAG_STATE_TTL_S = 30 * 24 * 3600


class FlagPublisher:
    """Decision + publication for one model (the serving one, or a shadow)."""

    def __init__(self, redis: aioredis.Redis, producer: AIOKafkaProducer, metrics: Metrics, *, topic: str,
                 state_key: Callable[[str], str], state_ttl_s: int = FLAG_STATE_TTL_S,
                 shadow: bool = False, book: VerdictBook | None = None, review_topic: str | None = None,
                 channel_key: Callable[[str], str] | None = None) -> None:
        self.redis = redis
        self.producer = producer
        self.metrics = metrics
        self.topic = topic
        self.state_key = state_key
        self.state_ttl_s = state_ttl_s
        self.shadow = shadow
        self.book = book  # moderators' verdicts (moderation.py); None: no moderation loop
        self.review_topic = review_topic
        self.channel_key = channel_key
        self.published = 0

    async def states(self, video_ids: list[str]) -> dict[str, VideoDecisionState | None]:
        """What the process remembers of each video (one MGET)."""
        keys = [self.state_key(v) for v in video_ids]
        raw = await self.metrics.timed_redis("flag_state", redis_client.mget(self.redis, keys))
        return {v: VideoDecisionState.from_dict(json.loads(r)) if r else None
                for v, r in zip(video_ids, raw, strict=True)}

    async def run(self, batch: list[Scored], decision: StreamDecision, model: ModelArtifact, *,
                  watermark: float, prior: dict[str, VideoDecisionState | None] | None = None,
                  ) -> list[tuple[Scored, dict]]:
        """Decide for every video of the batch; publish and remember. Returns what was sent.
        ``prior``: the states, when the caller read them already (``states``)."""
        if not batch:
            return []
        if prior is None:
            prior = await self.states([s.score.video_id for s in batch])
        now = time.time()
        records, states, reviews = [], {}, []
        channels = await self._channels(batch)
        # every decision first, then the sends: a decision that raises sends nothing of its batch
        for scored in batch:
            vid = scored.score.video_id
            key = self.state_key(vid)
            old = prior.get(vid)
            state, rec = decision.decide(old, scored.score, now_hour=scored.now_hour, burst=scored.burst,
                                         accounts=scored.accounts)
            moderation = None
            if self.book is not None:
                m = moderate(self.book, vid, channels.get(vid), old, state, rec, now)
                state, rec, moderation = m.state, m.flag, m.moderation
                self._count_moderation(m)
                if m.review is not None and self.review_topic is not None:
                    reviews.append((scored, self._record(scored, m.review, model, decision, watermark, now,
                                                         m.moderation)))
            if rec is not None and rec.status == "new":
                state = replace(state, flagged_at=now)
            if state is not None and state != (old or _NOTHING):  # a video with nothing to remember has no key
                states[key] = JSON_ENCODER.encode(state.to_dict())
            if rec is None:
                continue
            records.append((scored, self._record(scored, rec, model, decision, watermark, now, moderation)))
        sends = []
        for topic, docs in ((self.topic, records), (self.review_topic, reviews)):
            for scored, doc in docs:
                body = json.dumps(doc, separators=(",", ":")).encode()
                fut = await self.producer.send(topic, value=body, key=scored.score.video_id.encode())
                if topic == self.topic:
                    sends.append((scored, doc, fut))
                else:
                    await fut
                    self.metrics.review_flags.inc()
                    log.warning("flag of an allowlisted video sent for review video=%s flag_id=%s severity=%s",
                                doc["video_id"], doc["flag_id"], doc["severity"])
        for _, _, fut in sends:
            await fut
        done = time.time()
        self._count(sends, done)
        await self.metrics.timed_redis("flag_state", redis_client.set_ex(self.redis, states, self.state_ttl_s))
        return [(s, d) for s, d, _ in sends]

    def _record(self, scored: Scored, rec: Published, model: ModelArtifact, decision: StreamDecision,
                watermark: float, now: float, moderation: dict | None) -> dict:
        line = explanation(rec, scored, decision)
        if moderation is not None and moderation["action"] == "withdrawn":
            line = "withdrawn: cleared by moderation" + verdict_words(moderation)
        elif moderation is not None:
            line = "suppressed by moderation" + verdict_words(moderation) + "; " + line
        return build_record(scored.score.video_id, rec, model, threshold=decision.thresholds.publish,
                            explanation=line, watermark=watermark, detected_at=now,
                            accounts=accounts_doc(rec.windows, scored.accounts, scored.account_groups),
                            moderation=moderation)

    async def _channels(self, batch: list[Scored]) -> dict[str, str]:
        """The batch's videos' channels, read only while a channel allowlist exists."""
        if self.book is None or self.channel_key is None or not self.book.has_channel_allowlists:
            return {}
        ids = [s.score.video_id for s in batch]
        raw = await self.metrics.timed_redis("verdicts", redis_client.mget(self.redis, [self.channel_key(v) for v in ids]))
        return {v: (r.decode() if isinstance(r, bytes) else r) for v, r in zip(ids, raw, strict=True) if r}

    def _count_moderation(self, m) -> None:
        if m.suppressed is not None:
            self.metrics.moderation_suppressed.labels(reason=m.suppressed).inc()
        if m.flag is not None and m.moderation is not None and m.flag.status == "withdrawn" and not self.shadow:
            self.metrics.moderation_withdrawn.labels(scope=m.moderation["scope"]).inc()
            log.info("flag withdrawn by moderation video_flag_id=%s verdict=%s scope=%s", m.flag.flag_id,
                     m.moderation["verdict"], m.moderation["scope"])

    def _count(self, sends: list, done: float) -> None:
        m = self.metrics
        self.published += len(sends)
        if self.shadow:
            for _, doc, _ in sends:
                m.shadow_flags.labels(severity=doc["severity"]).inc()
            if sends:
                log.info("shadow flags published=%d topic=%s", len(sends), self.topic)
            return
        for scored, doc, _ in sends:
            m.flag_status.labels(status=doc["status"]).inc()
            if doc["status"] == "withdrawn":
                log.info("flag withdrawn video=%s flag_id=%s", doc["video_id"], doc["flag_id"])
                continue
            m.flags.labels(severity=doc["severity"]).inc()
            for p in {p for w in doc["windows"] for p in w["patterns"]}:
                m.flag_patterns.labels(pattern=p).inc()
            if scored.arrival_ms:
                m.end_to_end_latency.observe(max(0.0, done - scored.arrival_ms / 1000.0))
            log.info("flag video=%s flag_id=%s status=%s score=%.3f severity=%s windows=%d", doc["video_id"],
                     doc["flag_id"], doc["status"], doc["score"], doc["severity"], len(doc["windows"]))
