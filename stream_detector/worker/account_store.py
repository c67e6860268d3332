"""The account state in Redis: what ``accounts.InMemoryAccountStore`` keeps, for every worker.

Why Redis and not a repartition topic keyed by ``user_id`` (the Kafka Streams way): an account's
events arrive on many partitions, so its state must be shared by the workers; every update here
is an idempotent summary (a set of recent actions, OR-ed hour masks, a ZADD GT of who engaged a
video when) applied by one script call per key, so any worker can apply any account's actions
in any order, a replay after a crash adds nothing, and no second hop through the broker (a
producer send per account per batch, a second consumer group and its rebalances) is paid. The
judgement is sharded: the owner of events partition ``accounts.shard_of(user)`` judges that
account, so judgements follow the group's assignment like video scoring does.

Keys (``keys.py``): per account its state hash and ring list (hash-tagged by the account), per
video its engagers and per-hour account counts (hash-tagged by the video, its window's slot).
A batch is applied in script calls of at most ``PER_CALL`` accounts or videos, slot by slot on a
Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources

import redis.asyncio as aioredis

from stream_detector import keys, redis_client
from stream_detector.accounts import (
    DAYS,
    JUDGE_EVERY_MIN,
    MIN_ACTIONS,
    RING,
    SYNC_MINUTES,
    SYNC_SMALL,
    AccountActivity,
    Action,
)
from stream_detector.metrics import Metrics

PER_CALL = 1000
ENGAGER_MINUTES = 24 * 60  # engagers kept per video: the last day...
ENGAGERS_PER_VIDEO = 2000  # ... at most this many


class AccountStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, metrics: Metrics, *, ttl_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.metrics = metrics
        self.ttl_s = int(ttl_s)
        self._accounts = redis.register_script(resources.files("stream_detector").joinpath("accounts.lua").read_text())
        self._engagers = redis.register_script(resources.files("stream_detector").joinpath("engagers.lua").read_text())

    async def apply(self, actions: dict[str, list[Action]]) -> list[str]:
        """Apply a batch's actions per account (and who engaged which video when); returns the
        accounts now due for a judgement."""
        if not actions:
            return []
        users = list(actions)
        due: list[str] = []
        flagged: set[str] = set()
        # the accounts' TTL is refreshed once a clock period: an hour, or a quarter of a shorter TTL
        refresh = int(time.time() // max(1, min(3600, self.ttl_s // 4)))
        for chunk in _chunks(users, PER_CALL, lambda u: keys.account_state(self.prefix, u), self.redis):
            ks, args = [], [self.ttl_s, RING, JUDGE_EVERY_MIN, MIN_ACTIONS, refresh]
            for u in chunk:
                ks += [keys.account_state(self.prefix, u), keys.account_ring(self.prefix, u)]
                acts = actions[u]
                args.append(len(acts))
                args += [a.key() for a in acts]
            got_due, got_flagged = await self.metrics.timed_redis("accounts", self._accounts(keys=ks, args=args))
            due += [chunk[int(i) - 1] for i in got_due]
            flagged.update(chunk[int(i) - 1] for i in got_flagged)
        by_video: dict[str, list[tuple[str, int]]] = {}
        for u, acts in actions.items():
            for a in acts:
                by_video.setdefault(a.video_id, []).append((u, a.minute))
        videos = list(by_video)
        for chunk in _chunks(videos, PER_CALL, lambda v: keys.engagers(self.prefix, v), self.redis):
            ks, args = [], [self.ttl_s, ENGAGER_MINUTES, ENGAGERS_PER_VIDEO]
            for v in chunk:
                ks += [keys.engagers(self.prefix, v), keys.video_accounts(self.prefix, v)]
                pairs = by_video[v]
                args.append(len(pairs))
                for u, m in pairs:
                    args += [u, m, 1 if u in flagged else 0]
            await self.metrics.timed_redis("accounts", self._engagers(keys=ks, args=args))
        return due

    async def activity(self, users: Sequence[str]) -> dict[str, AccountActivity]:
        """The accounts' summaries (one pipeline; a missing account is absent)."""
        if not users:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for u in users:
            pipe.hgetall(keys.account_state(self.prefix, u))
            pipe.lrange(keys.account_ring(self.prefix, u), 0, -1)
        got = await self.metrics.timed_redis("accounts", pipe.execute())
        out = {}
        for k, u in enumerate(users):
            state, ring = got[2 * k], got[2 * k + 1]
            if not ring:
                continue
            act = AccountActivity(u)
            act.actions = sorted((Action.parse(_s(x)) for x in ring), key=lambda a: a.minute)[-RING:]
            fields = {_s(f): _s(v) for f, v in state.items()}
            days = {}
            for f, v in fields.items():
                if f.startswith("d") and ":" in v:
                    day, mask = v.split(":")
                    days[int(day)] = int(mask)
            newest = max(days, default=0)  # a field not overwritten for DAYS days is stale
            act.day_masks = {d: days[d] for d in sorted(days) if d > newest - DAYS}
            act.first_minute = int(fields.get("first", 0))
            act.last_minute = int(fields.get("last", 0))
            out[u] = act
        return out

    async def co_engagers(self, queries: Sequence[tuple[str, int]]) -> dict[tuple[str, int], list[tuple[str, int]]]:
        """Per (video, minute), the accounts that engaged the video within +-SYNC_MINUTES; a
        query that finds a crowd (more than SYNC_SMALL) is left out: being in a crowd says nothing."""
        if not queries:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for v, m in queries:  # counted first: a crowd's members are not worth reading
            pipe.zcount(keys.engagers(self.prefix, v), m - SYNC_MINUTES, m + SYNC_MINUTES)
        sizes = await self.metrics.timed_redis("accounts", pipe.execute())
        small = [q for q, n in zip(queries, sizes, strict=True) if n <= SYNC_SMALL]
        out: dict[tuple[str, int], list[tuple[str, int]]] = {}
        if small:
            pipe = self.redis.pipeline(transaction=False)
            for v, m in small:
                pipe.zrangebyscore(keys.engagers(self.prefix, v), m - SYNC_MINUTES, m + SYNC_MINUTES, start=0,
                                   num=SYNC_SMALL + 1, withscores=True)
            got = await self.metrics.timed_redis("accounts", pipe.execute())
            out.update({q: [(_s(u), int(s)) for u, s in rows] for q, rows in zip(small, got, strict=True)})
        return out

    async def video_hours(self, videos: Sequence[str]) -> dict[str, tuple[dict[int, tuple[int, int]], list[dict]]]:
        """Per video with account actions: (hour -> (account actions, actions of flagged
        accounts), the groups of its flagged accounts)."""
        if not videos:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for v in videos:
            pipe.hgetall(keys.video_accounts(self.prefix, v))
        raw = await self.metrics.timed_redis("accounts", pipe.execute())
        out: dict[str, tuple[dict[int, tuple[int, int]], list[dict]]] = {}
        for v, fields in zip(videos, raw, strict=True):
            hours: dict[int, list[int]] = {}
            groups = []
            for f, val in fields.items():
                f = _s(f)
                if f[:1] in ("t", "f") and f[1:].isdigit():
                    hours.setdefault(int(f[1:]), [0, 0])[0 if f[0] == "t" else 1] = int(val)
                elif f.startswith("g:"):
                    groups.append({"group_id": f[2:], "size": int(val)})
            if hours:
                out[v] = ({h: (t, fl) for h, (t, fl) in hours.items()}, sorted(groups, key=lambda g: -g["size"])[:10])
        return out

    async def mark_flagged(self, user: str, flagged: bool) -> None:
        """Whether the account stands flagged: from now on its actions count as flagged at ingest."""
        await self.metrics.timed_redis("accounts", self.redis.hset(keys.account_state(self.prefix, user), "x",
                                                                   1 if flagged else 0))

    async def count_flagged(self, actions: Sequence[Action], group: dict | None = None) -> None:
        """A newly flagged account's actions count as flagged in their videos' hours (and its
        group, when it has one, is named on those videos); its later ones are counted as they
        arrive (``mark_flagged``)."""
        if not actions:
            return
        pipe = self.redis.pipeline(transaction=False)
        for a in actions:
            key = keys.video_accounts(self.prefix, a.video_id)
            pipe.hincrby(key, f"f{a.minute // 60}", 1)
            if group is not None:
                pipe.hset(key, f"g:{group['group_id']}", group["size"])
        await self.metrics.timed_redis("accounts", pipe.execute())

    async def note_suspicion(self, hours: dict[str, dict[int, float]]) -> dict[str, list[int]]:
        """Store the suspicious hours the video level found (suspicion >= SUSPECT_P, on the user level's scale);
        returns, per video, the hours that were not known as suspicious before."""
        if not hours:
            return {}
        videos = list(hours)
        pipe = self.redis.pipeline(transaction=False)
        for v in videos:
            pipe.hmget(keys.video_suspicion(self.prefix, v), [str(h) for h in hours[v]])
        known = await self.metrics.timed_redis("accounts", pipe.execute())
        pipe = self.redis.pipeline(transaction=False)
        fresh: dict[str, list[int]] = {}
        for v, old in zip(videos, known, strict=True):
            new = {str(h): f"{p:.4f}" for (h, p), o in zip(hours[v].items(), old, strict=True)
                   if o is None or float(o) < p}
            if new:
                key = keys.video_suspicion(self.prefix, v)
                pipe.hset(key, mapping=new)
                pipe.expire(key, self.ttl_s)
                fresh[v] = [int(h) for h, o in zip(hours[v], old, strict=True) if o is None]
        if fresh:
            await self.metrics.timed_redis("accounts", pipe.execute())
        return fresh

    async def suspicion(self, queries: Sequence[tuple[str, int]]) -> dict[tuple[str, int], float]:
        """The video level's hour probability of each (video, hour), where it was suspicious."""
        if not queries:
            return {}
        by_video: dict[str, list[int]] = {}
        for v, h in queries:
            by_video.setdefault(v, []).append(h)
        pipe = self.redis.pipeline(transaction=False)
        videos = list(by_video)
        for v in videos:
            pipe.hmget(keys.video_suspicion(self.prefix, v), [str(h) for h in by_video[v]])
        got = await self.metrics.timed_redis("accounts", pipe.execute())
        out = {}
        for v, vals in zip(videos, got, strict=True):
            for h, p in zip(by_video[v], vals, strict=True):
                if p is not None:
                    out[(v, h)] = float(p)
        return out

    async def engaged_in(self, video: str, hour: int, limit: int = 500, hours: int = 1) -> list[str]:
        """The accounts that engaged a video in ``hours`` hours from ``hour`` (its engagers'
        latest minute there)."""
        rows = await self.metrics.timed_redis("accounts", self.redis.zrangebyscore(
            keys.engagers(self.prefix, video), hour * 60, (hour + hours) * 60 - 1, start=0, num=limit * hours))
        return [_s(u) for u in rows]


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _chunks(items: list[str], size: int, key_of, client) -> list[list[str]]:
    """Script-call chunks: at most ``size`` items, and on a cluster one hash slot each."""
    if redis_client.is_cluster(client):
        from redis.crc import key_slot

        by_slot: dict[int, list[str]] = {}
        for it in items:
            by_slot.setdefault(key_slot(key_of(it).encode()), []).append(it)
        groups = list(by_slot.values())
    else:
        groups = [items]
    return [g[i : i + size] for g in groups for i in range(0, len(g), size)]
