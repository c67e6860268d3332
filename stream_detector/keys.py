"""Every Redis key the worker writes, in one place.

Per-video keys are hash-tagged by video (``{<video_id>}``) so one video's keys share a Redis
Cluster slot; per-partition keys are hash-tagged by partition. ``prefix`` is
``DETECTOR_KEY_PREFIX`` (one deployment, or one test, per prefix).
"""

from __future__ import annotations


def window(prefix: str, video_id: str) -> str:
    """The video's rolling window (windows.py / windows.lua)."""
    return f"{prefix}:w:{{{video_id}}}"


def flag_state(prefix: str, video_id: str) -> str:
    """The decision process's memory of the video (decision.VideoDecisionState, JSON)."""
    return f"{prefix}:f:{{{video_id}}}"


def shadow_flag_state(prefix: str, video_id: str, sha256: str) -> str:
    """The same for a shadow model, per model."""
    return f"{prefix}:fs:{sha256[:16]}:{{{video_id}}}"


def score(prefix: str, video_id: str) -> str:
    """The latest scoring of the video (the /score/{video_id} document)."""
    return f"{prefix}:s:{{{video_id}}}"


def due(prefix: str, topic: str, partition: int) -> str:
    """The durable re-score schedule of a partition (schedule.py)."""
    return f"{{{prefix}:due:{topic}:{partition}}}"


def active_hours(prefix: str, topic: str, partition: int) -> str:
    """Videos of a partition by their newest event hour: who to re-score when an hour closes."""
    return f"{{{prefix}:act:{topic}:{partition}}}"


def watermark(prefix: str, topic: str, partition: int) -> str:
    return f"{prefix}:wm:{topic}:{partition}"


def active_videos(prefix: str, hour: int) -> str:
    """HyperLogLog of the videos updated in one wall-clock hour (all workers)."""
    return f"{{{prefix}-active}}:{hour}"


def quarantined(prefix: str, video_id: str) -> str:
    """A video whose judgement raised: attempts, reason, traceback (worker/quarantine.py)."""
    return f"{prefix}:q:{{{video_id}}}"


def quarantine_index(prefix: str) -> str:
    """The videos with a quarantine entry, by last failure (the /quarantine listing)."""
    return f"{{{prefix}-quarantine}}:index"


def accounts_seen(prefix: str) -> str:
    """Set while the deployment sees account events (the user level's work is skipped without)."""
    return f"{prefix}:accounts-seen"


def account_state(prefix: str, user_id: str) -> str:
    """An account's activity summary: hours per day, first/last minute (accounts.lua)."""
    return f"{prefix}:a:{{{user_id}}}"


def account_ring(prefix: str, user_id: str) -> str:
    """An account's recent actions (accounts.lua)."""
    return f"{prefix}:ar:{{{user_id}}}"


def account_flag(prefix: str, user_id: str) -> str:
    """The account decision's memory of the account (its published flag)."""
    return f"{prefix}:af:{{{user_id}}}"


def account_score(prefix: str, user_id: str) -> str:
    """The latest judgement of an account (the /accounts/{user_id} document)."""
    return f"{prefix}:as:{{{user_id}}}"


def engagers(prefix: str, video_id: str) -> str:
    """The accounts that engaged a video lately, by minute (engagers.lua); the video's slot."""
    return f"{prefix}:ve:{{{video_id}}}"


def video_suspicion(prefix: str, video_id: str) -> str:
    """The hours of a video the video level found suspicious, with their probability (what
    the account judgement reads)."""
    return f"{prefix}:vs:{{{video_id}}}"


def video_accounts(prefix: str, video_id: str) -> str:
    """Per hour, the account actions on a video (t<hour>) and those of flagged accounts (f<hour>)."""
    return f"{prefix}:va:{{{video_id}}}"


def video_channel(prefix: str, video_id: str) -> str:
    """The video's channel as its latest events name it (event 1.1 ``channel_id``)."""
    return f"{prefix}:ch:{{{video_id}}}"


def verdict_dead_lettered(prefix: str, verdict_key: str) -> str:
    """Set once a pending verdict was dead-lettered as unknown_flag (by whichever worker)."""
    return f"{prefix}:vdlq:{verdict_key}"
