"""What moderators' verdicts do to flags: the moderation loop's rules, in one place.

``VerdictBook`` holds every verdict a worker has read (the verdicts topic is a global table:
each worker reads all of it from the beginning at start, then follows it), and
``moderate`` applies them to one video's decision, after ``StreamDecision.decide``:

- **False positive, scope episode**: the episode the named flag belongs to (any flag id it
  published, old ones too) is withdrawn at once with ``moderation`` saying why, and it is
  *cleared*: while the video has no standing flag, a new one is published only when the
  evidence grows materially (``grew``): an hour after the cleared hours scoring at least
  ``CLEARED_MARGIN`` above the cleared score, or a pattern the cleared episode did not show.
- **False positive, scope video / channel / account**: an allowlist (until ``until``, or a
  later verdict on the same subject and scope). The video is still scored and visible in
  ``/score``; no flag is published while it holds (a standing one is withdrawn), and every
  suppression is counted. A suppressed flag whose severity is ``critical`` goes to the
  review topic instead, once per allowlist verdict: an allowlist cannot silently hide a farm.
- **Confirmed / unsure**: labels (counted, exported for ``detector-train verdicts``); a
  ``confirmed`` on a subject and scope ends an allowlist a false positive started there.

The decision state carries what moderation needs (``VideoDecisionState.episode_ids``,
``cleared``, ``reviewed``): the same Redis document the decision already reads and writes,
so moderation survives restarts and rebalances with it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from stream_detector.accounts import AccountFlagState
from stream_detector.decision import Published, VideoDecisionState
from stream_detector.flags import flag_id, iso
from stream_detector.verdicts import Verdict

CLEARED_MARGIN = 0.05  # a cleared episode's later hours must score this much higher to flag again
EPISODE_IDS_KEPT = 32  # flag ids remembered per episode (a verdict may name an old one)
EPISODE_VERDICTS_KEPT = 16  # false-positive episode verdicts remembered per video
_NOTHING = VideoDecisionState()  # what a missing state means


@dataclass
class VerdictBook:
    """Every verdict read, folded in topic order (later verdicts on the same subject win)."""

    allowlists: dict[tuple[str, str], Verdict] = field(default_factory=dict)  # (scope, subject) -> FP
    episodes: dict[str, OrderedDict[str, Verdict]] = field(default_factory=dict)  # video -> flag_id -> FP
    account_episodes: dict[str, OrderedDict[str, Verdict]] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (verdict, scope) -> n

    def add(self, v: Verdict) -> None:
        self.counts[(v.verdict, v.scope)] = self.counts.get((v.verdict, v.scope), 0) + 1
        if v.scope == "episode":
            book = self.account_episodes if v.video_id is None else self.episodes
            subject = v.user_id if v.video_id is None else v.video_id
            assert subject is not None and v.flag_id is not None  # parse_verdict checked
            kept = book.setdefault(subject, OrderedDict())
            if v.verdict == "false_positive":
                kept[v.flag_id] = v
                while len(kept) > EPISODE_VERDICTS_KEPT:
                    kept.popitem(last=False)
            elif v.verdict == "confirmed":
                kept.pop(v.flag_id, None)
            return
        slot = (v.scope, v.subject)
        if v.verdict == "false_positive":
            self.allowlists[slot] = v
        elif v.verdict == "confirmed":
            self.allowlists.pop(slot, None)

    def allowlist_for(self, video_id: str, channel_id: str | None, now: float) -> Verdict | None:
        for slot in (("video", video_id), ("channel", channel_id or "")):
            v = self.allowlists.get(slot)
            if v is not None and v.holds(now) and slot[1]:
                return v
        return None

    def account_allowlisted(self, user_id: str, now: float) -> Verdict | None:
        v = self.allowlists.get(("account", user_id))
        return v if v is not None and v.holds(now) else None

    def episode_verdicts(self, video_id: str) -> list[Verdict]:
        kept = self.episodes.get(video_id)
        return list(kept.values()) if kept else []

    def touches(self, video_id: str, channel_id: str | None) -> bool:
        """Whether any verdict names this video (or its channel)."""
        return (video_id in self.episodes or ("video", video_id) in self.allowlists
                or (channel_id is not None and ("channel", channel_id) in self.allowlists))

    @property
    def has_channel_allowlists(self) -> bool:
        return any(scope == "channel" for scope, _ in self.allowlists)

    def active_allowlists(self, now: float) -> list[Verdict]:
        return [v for v in self.allowlists.values() if v.holds(now)]


def moderation_doc(v: Verdict, action: str) -> dict:
    """The ``moderation`` field of a flag record (flag 1.3): what moderation did, and why."""
    doc = {"action": action, "verdict": v.verdict, "scope": v.scope}
    for name in ("flag_id", "reviewer", "reason"):
        value = getattr(v, name)
        if value is not None:
            doc[name] = value
    if v.until is not None:
        doc["until"] = iso(v.until)
    return doc


@dataclass(frozen=True)
class Moderated:
    """``moderate``'s answer: the state to keep, the record for the flags topic (with its
    moderation field, if moderation made or changed it), the record for the review topic, and
    why a record was held back."""

    state: VideoDecisionState
    flag: Published | None
    moderation: dict | None = None
    review: Published | None = None
    suppressed: str | None = None  # "episode_cleared" | "allowlist_video" | "allowlist_channel"
    applied: str | None = None  # the key of a verdict applied now


def moderate(book: VerdictBook, video_id: str, channel_id: str | None, old: VideoDecisionState | None,
             new: VideoDecisionState, rec: Published | None, now: float) -> Moderated:
    old = old or _NOTHING
    if rec is None and not book.touches(video_id, channel_id) and new.episode_ids == old.episode_ids \
            and new.cleared == old.cleared and new.reviewed == old.reviewed:
        return Moderated(new, None)  # the common case, on every scoring: no verdict, nothing to say
    new = _carry(old, new, rec)
    # 1. an episode verdict naming a flag of this episode: withdraw now, clear the episode
    for v in book.episode_verdicts(video_id):
        if v.flag_id in old.episode_ids and (old.cleared or {}).get("verdict") != v.key:
            cleared = _cleared(v, old)
            if old.active:
                return _withdraw(old, cleared, video_id, moderation_doc(v, "withdrawn"), v.key)
            return Moderated(replace(old, cleared=cleared), None, applied=v.key)
    # 2. an allowlist: nothing published while it holds, a standing flag withdrawn
    allow = book.allowlist_for(video_id, channel_id, now)
    if allow is not None:
        if old.active:
            return _withdraw(old, old.cleared, video_id, moderation_doc(allow, "withdrawn"), allow.key)
        if rec is None or rec.status == "withdrawn":
            return Moderated(old if rec is None else new, None)
        reason = f"allowlist_{allow.scope}"
        if rec.severity == "critical" and old.reviewed != allow.key:
            return Moderated(replace(old, reviewed=allow.key), None, review=rec, suppressed=reason,
                             moderation=moderation_doc(allow, "suppressed"))
        return Moderated(old, None, suppressed=reason)
    # 3. a cleared episode: a new flag only when the evidence grew materially
    if rec is not None and rec.status == "new" and old.cleared and not old.active and not grew(old.cleared, rec):
        return Moderated(old, None, suppressed="episode_cleared")
    return Moderated(new, rec)


def grew(cleared: dict, rec: Published) -> bool:
    """The material-growth rule of a cleared episode (module docstring)."""
    last, score = cleared["last_hour"], cleared["score"]
    patterns = set(cleared.get("patterns", ()))
    for w in rec.windows:
        if set(w.patterns) - patterns:
            return True
        if w.end_hour - 1 > last and w.score >= score + CLEARED_MARGIN:  # reaches past the cleared hours
            return True
    return False


def _carry(old: VideoDecisionState, new: VideoDecisionState, rec: Published | None) -> VideoDecisionState:
    """Moderation's fields of the state: the episode's flag ids (a new episode starts afresh)."""
    ids = old.episode_ids
    if rec is not None and rec.status != "withdrawn":
        ids = (() if rec.status == "new" else ids) + (rec.flag_id,)
        ids = ids[-EPISODE_IDS_KEPT:]
    return replace(new, episode_ids=ids, cleared=old.cleared, reviewed=old.reviewed)


def _cleared(v: Verdict, old: VideoDecisionState) -> dict:
    windows = old.windows
    return {
        "verdict": v.key,
        "flag_id": v.flag_id,
        "last_hour": max((w.end_hour for w in windows), default=0) - 1,
        "score": max((w.score for w in windows), default=old.score),
        "patterns": sorted({p for w in windows for p in w.patterns}),
    }


def _withdraw(old: VideoDecisionState, cleared: dict | None, video_id: str, doc: dict, key: str) -> Moderated:
    fid = flag_id(video_id, old.windows, salt=f"withdrawn:{old.generation}")
    state = replace(old, flag_id=fid, status="withdrawn", generation=old.generation + 1, cleared=cleared)
    rec = Published("withdrawn", fid, tuple(old.windows), old.score, old.published_severity, cause="moderation")
    return Moderated(state, rec, moderation=doc, applied=key)


@dataclass(frozen=True)
class ModeratedAccount:
    """``moderate_account``'s answer, like ``Moderated`` for an account's flag."""

    state: AccountFlagState
    status: str | None
    moderation: dict | None = None
    suppressed: str | None = None


def moderate_account(book: VerdictBook, user_id: str, old: AccountFlagState | None, new: AccountFlagState,
                     status: str | None, now: float) -> ModeratedAccount:
    """The same rules for account flags: a false positive on one of the episode's flags
    withdraws it and clears it (flagged again only with a pattern the cleared episode did not
    show); an account allowlist withdraws a standing flag and suppresses new ones."""
    old = old or AccountFlagState()
    ids = old.episode_ids
    if status in ("new", "updated") and new.flag_id is not None:
        ids = ((() if status == "new" else ids) + (new.flag_id,))[-EPISODE_IDS_KEPT:]
    new = replace(new, episode_ids=ids, cleared=old.cleared)
    kept = book.account_episodes.get(user_id) or {}
    for v in kept.values():
        if v.flag_id in old.episode_ids and (old.cleared or {}).get("verdict") != v.key:
            cleared = {"verdict": v.key, "flag_id": v.flag_id, "patterns": sorted(old.patterns)}
            if old.active:
                return ModeratedAccount(_withdraw_account(user_id, old, cleared), "withdrawn",
                                        moderation_doc(v, "withdrawn"))
            return ModeratedAccount(replace(old, cleared=cleared), None)
    allow = book.account_allowlisted(user_id, now)
    if allow is not None:
        if old.active:
            return ModeratedAccount(_withdraw_account(user_id, old, old.cleared), "withdrawn",
                                    moderation_doc(allow, "withdrawn"))
        return ModeratedAccount(old, None, suppressed="allowlist_account" if status else None)
    if status == "new" and old.cleared and not old.active and \
            set(new.patterns) <= set(old.cleared.get("patterns", ())):
        return ModeratedAccount(old, None, suppressed="episode_cleared")
    return ModeratedAccount(new, status)


def _withdraw_account(user_id: str, old: AccountFlagState, cleared: dict | None) -> AccountFlagState:
    from stream_detector.accounts import account_flag_id

    state = replace(old, status="withdrawn", records=old.records + 1, generation=old.generation + 1,
                    cleared=cleared)
    return replace(state, flag_id=account_flag_id(user_id, state.generation, state.records))


def verdict_words(moderation: dict) -> str:
    """" (false_positive, scope episode, by ana: a premiere)": the explanation's moderation part."""
    who = f", by {moderation['reviewer']}" if moderation.get("reviewer") else ""
    why = f": {moderation['reason']}" if moderation.get("reason") else ""
    return f" ({moderation['verdict']}, scope {moderation['scope']}{who}{why})"
