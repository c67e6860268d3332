"""The verdict contract and the moderation rules (no servers: pure functions; the worker's end
to end behaviour on real servers is in tests/test_moderation_loop.py)."""

from __future__ import annotations

import json

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.decision import Published, VideoDecisionState
from stream_detector.events import Rejection
from stream_detector.moderation import CLEARED_MARGIN, VerdictBook, moderate
from stream_detector.scoring import FlaggedWindow
from stream_detector.verdicts import REASONS, SCHEMA_PATH, Verdict, parse_verdict

NOW = 1_780_000_000.0
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _raw(**doc) -> bytes:
    return json.dumps({"verdict": "false_positive", "scope": "episode", "flag_id": "f1", "video_id": "v1",
                       "ts": "2026-06-01T10:00:00Z", **doc}).encode()


def test_a_valid_verdict_parses_and_matches_the_schema() -> None:
    v = parse_verdict(_raw(reviewer="ana", reason="premiere"), key="0:7")
    assert isinstance(v, Verdict)
    assert (v.verdict, v.scope, v.flag_id, v.video_id, v.reviewer, v.key) == (
        "false_positive", "episode", "f1", "v1", "ana", "0:7")
    jsonschema.validate(json.loads(_raw(reviewer="ana")), SCHEMA)


def test_each_bad_verdict_gets_its_reason() -> None:
    cases = {
        b"{": "not_json",
        b"[1]": "not_object",
        _raw(verdict="maybe"): "bad_verdict",
        _raw(scope="planet"): "bad_scope",
        _raw(video_id=None): "missing_subject",
        _raw(user_id="u1"): "missing_subject",  # both subjects
        _raw(scope="account"): "missing_subject",  # account needs user_id
        _raw(scope="channel"): "missing_subject",  # channel needs channel_id
        _raw(flag_id=None): "missing_flag_id",
        _raw(video_id="   "): "bad_id",
        _raw(ts="yesterday"): "bad_timestamp",
        _raw(until="soon", scope="video"): "bad_timestamp",
        _raw(reason=42): "bad_text",
        b"x" * 20_000: "oversized",
    }
    for raw, reason in cases.items():
        got = parse_verdict(raw)
        assert isinstance(got, Rejection) and got.reason == reason, (raw[:80], got)
        assert reason in REASONS


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["verdict", "scope", "flag_id", "video_id", "user_id", "channel_id",
                                        "until", "ts", "reviewer", "reason", "other"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                                 st.text(max_size=30), st.sampled_from(["false_positive", "confirmed", "episode",
                                                                        "video", "channel", "account",
                                                                        "2026-06-01T10:00:00Z"]),
                                 st.lists(st.integers(), max_size=2))))
def test_the_parser_never_raises_and_what_it_accepts_the_schema_accepts(doc) -> None:
    got = parse_verdict(json.dumps(doc).encode())
    if isinstance(got, Verdict):  # null counts as absent (as in events)
        jsonschema.validate({k: v for k, v in doc.items() if v is not None}, SCHEMA)
    else:
        assert got.reason in REASONS


def _w(start: int, end: int, score: float, patterns=("drip_feed",)) -> FlaggedWindow:
    return FlaggedWindow(start, end, score, ("views",), patterns)


def _standing(fid: str = "f1") -> VideoDecisionState:
    return VideoDecisionState(windows=[_w(100, 104, 0.9)], flag_id=fid, status="new", score=0.9,
                              published_severity="high", episode_ids=(fid,))


def _verdict(**kw) -> Verdict:
    base = dict(verdict="false_positive", scope="episode", ts=NOW, flag_id="f1", video_id="v1", key="0:1")
    return Verdict(**{**base, **kw})


def test_a_false_positive_withdraws_the_episode_and_it_stays_closed_until_the_evidence_grows() -> None:
    book = VerdictBook()
    book.add(_verdict())
    old = _standing()
    m = moderate(book, "v1", None, old, old, None, NOW)
    assert m.flag is not None and m.flag.status == "withdrawn" and m.applied == "0:1"
    assert m.moderation["action"] == "withdrawn" and m.moderation["verdict"] == "false_positive"
    state = m.state
    assert state.cleared["last_hour"] == 103 and not state.active
    # the same hours flagged again by the decision: held back
    again = Published("new", "f2", (_w(100, 104, 0.92),), 0.92, "high")
    m2 = moderate(book, "v1", None, state, state, again, NOW)
    assert m2.flag is None and m2.suppressed == "episode_cleared"
    # applying the verdict twice changes nothing (a replay at start)
    assert moderate(book, "v1", None, state, state, None, NOW).flag is None
    # new hours, but not higher: still closed; higher by the margin: published
    overlapping = Published("new", "f6", (_w(103, 104, 0.99),), 0.99, "critical")  # the cleared last hour
    assert moderate(book, "v1", None, state, state, overlapping, NOW).flag is None
    later_low = Published("new", "f3", (_w(110, 112, 0.9 + CLEARED_MARGIN / 2),), 0.93, "high")
    assert moderate(book, "v1", None, state, state, later_low, NOW).flag is None
    later_high = Published("new", "f4", (_w(110, 112, 0.9 + 2 * CLEARED_MARGIN),), 0.99, "critical")
    m3 = moderate(book, "v1", None, state, state, later_high, NOW)
    assert m3.flag is later_high and m3.state.episode_ids == ("f4",)
    # a pattern the cleared episode did not show is material too
    other = Published("new", "f5", (_w(100, 101, 0.8, ("spike",)),), 0.8, "medium")
    assert moderate(book, "v1", None, state, state, other, NOW).flag is other


def test_an_older_flag_id_of_the_standing_episode_applies_to_it() -> None:
    book = VerdictBook()
    book.add(_verdict(flag_id="f-old"))
    old = replace_state(_standing("f-new"), episode_ids=("f-old", "f-new"))
    m = moderate(book, "v1", None, old, old, None, NOW)
    assert m.flag is not None and m.flag.status == "withdrawn"


def test_an_allowlist_suppresses_reviews_critical_once_and_expires() -> None:
    book = VerdictBook()
    book.add(_verdict(scope="channel", channel_id="c1", flag_id=None, until=NOW + 3600, key="0:2"))
    rec = Published("new", "f9", (_w(100, 102, 0.99),), 0.99, "critical")
    m = moderate(book, "v7", "c1", None, VideoDecisionState(), rec, NOW)
    assert m.flag is None and m.review is rec and m.suppressed == "allowlist_channel"
    m2 = moderate(book, "v7", "c1", m.state, VideoDecisionState(), rec, NOW)
    assert m2.flag is None and m2.review is None  # reviewed once per allowlist
    grown = Published("new", "f10", (_w(100, 105, 0.99),), 0.99, "critical")
    assert moderate(book, "v7", "c1", m.state, VideoDecisionState(), grown, NOW).review is None
    assert moderate(book, "v7", "c1", m.state, VideoDecisionState(), rec, NOW + 7200).flag is rec  # expired
    assert moderate(book, "v7", "c2", None, VideoDecisionState(), rec, NOW).flag is rec  # another channel


def test_a_video_allowlist_withdraws_the_standing_flag_and_a_confirmed_verdict_ends_it() -> None:
    book = VerdictBook()
    book.add(_verdict(scope="video", flag_id=None, key="0:3"))
    old = _standing()
    m = moderate(book, "v1", None, old, old, None, NOW)
    assert m.flag.status == "withdrawn" and m.moderation["scope"] == "video"
    book.add(_verdict(scope="video", verdict="confirmed", flag_id=None, key="0:4"))
    assert book.allowlist_for("v1", None, NOW) is None


def replace_state(state: VideoDecisionState, **kw) -> VideoDecisionState:
    from dataclasses import replace

    return replace(state, **kw)


def test_account_flags_take_verdicts_the_same_way() -> None:
    from stream_detector.accounts import AccountFlagState
    from stream_detector.moderation import moderate_account

    standing = AccountFlagState(flag_id="a1", status="new", records=1, patterns=("sync",), episode_ids=("a1",))
    book = VerdictBook()
    book.add(_verdict(video_id=None, user_id="u1", flag_id="a1", key="0:9"))
    m = moderate_account(book, "u1", standing, standing, None, NOW)
    assert m.status == "withdrawn" and m.moderation["verdict"] == "false_positive"
    assert m.state.flag_id != "a1" and not m.state.active and m.state.cleared["patterns"] == ["sync"]
    # flagged again with the same patterns: held back; with a new pattern: published
    again = AccountFlagState(flag_id="a2", status="new", records=3, patterns=("sync",))
    assert moderate_account(book, "u1", m.state, again, "new", NOW).status is None
    more = AccountFlagState(flag_id="a3", status="new", records=3, patterns=("no_sleep", "sync"))
    assert moderate_account(book, "u1", m.state, more, "new", NOW).status == "new"
    # an account allowlist: a standing flag withdrawn, new ones suppressed
    book.add(_verdict(video_id=None, user_id="u2", flag_id=None, scope="account", key="0:10"))
    other = AccountFlagState(flag_id="b1", status="new", records=1, patterns=("rate",), episode_ids=("b1",))
    assert moderate_account(book, "u2", other, other, None, NOW).status == "withdrawn"
    fresh = AccountFlagState(flag_id="b2", status="new", records=1, patterns=("rate",))
    got = moderate_account(book, "u2", None, fresh, "new", NOW)
    assert got.status is None and got.suppressed == "allowlist_account"


def test_labels_reestimate_the_publish_threshold_upwards_only(tmp_path) -> None:
    from training.verdicts import load_labels, report

    def flag(fid, vid, status, score):
        return {"flag_id": fid, "video_id": vid, "status": status, "score": score, "threshold": 0.7}

    flags = [flag("a1", "a", "new", 0.85), flag("a2", "a", "updated", 0.9),  # one episode, max 0.9
             flag("b1", "b", "new", 0.8),  # a false positive
             flag("c1", "c", "new", 0.95), flag("c2", "c", "withdrawn", 0.3), flag("c3", "c", "new", 0.75)]
    verdicts = [{"flag_id": "a1", "video_id": "a", "verdict": "confirmed", "scope": "episode", "ts": NOW},
                {"flag_id": "b1", "video_id": "b", "verdict": "false_positive", "scope": "episode", "ts": NOW},
                {"flag_id": "c1", "video_id": "c", "verdict": "confirmed", "scope": "episode", "ts": NOW},
                {"flag_id": "c3", "video_id": "c", "verdict": "false_positive", "scope": "episode", "ts": NOW},
                {"flag_id": "zz", "video_id": "z", "verdict": "confirmed", "scope": "episode", "ts": NOW},
                {"flag_id": "a2", "video_id": "a", "verdict": "unsure", "scope": "episode", "ts": NOW}]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(f) + "\n" for f in flags))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    labels = load_labels(tmp_path / "v.jsonl", tmp_path / "f.jsonl")
    assert sorted(zip(labels.scores.tolist(), labels.confirmed.tolist(), strict=True)) == [
        (0.75, False), (0.8, False), (0.9, True), (0.95, True)]  # c's second episode is its own
    assert labels.unmatched == 1 and labels.threshold == 0.7
    rep = report(labels, target_precision=0.9)
    assert rep["before"]["precision"] == 0.5 and rep["before"]["flags"] == 4
    assert rep["after"]["threshold"] == 0.9 and rep["after"]["precision"] == 1.0
    assert rep["after"]["confirmed_kept"] == 1.0


def test_the_verdicts_command_says_one_line_and_exits_2_on_bad_input(tmp_path, capsys) -> None:
    from training.cli import main

    (tmp_path / "v.jsonl").write_text('{"verdict": "maybe"}\nnot json\n')
    (tmp_path / "f.jsonl").write_text("")
    assert main(["verdicts", "--verdicts", str(tmp_path / "v.jsonl"), "--flags", str(tmp_path / "f.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v.jsonl:2: not JSON" in err[0]
    (tmp_path / "v.jsonl").write_text('{"verdict": "maybe"}\n')
    assert main(["verdicts", "--verdicts", str(tmp_path / "v.jsonl"), "--flags", str(tmp_path / "f.jsonl")]) == 2
    assert "no verdict names a flag" in capsys.readouterr().err
    assert main(["verdicts", "--verdicts", str(tmp_path / "missing"), "--flags", str(tmp_path / "f.jsonl")]) == 2


def test_the_model_card_says_how_many_real_labels_it_saw(tmp_path, capsys) -> None:
    from training.cli import main
    from training.pipeline import real_labels_line

    assert real_labels_line(None).startswith("none: trained and evaluated on simulated data only")
    line = real_labels_line({"labelled_flags": 130, "confirmed": 117, "false_positive": 13, "target_precision": 0.9,
                             "before": {"precision": 0.9, "threshold": 0.8496},
                             "after": {"precision": 0.958, "threshold": 0.9541}})
    assert line.startswith("130 judged flags (117 confirmed, 13 false positives)") and "0.8496" in line
    # `all` refuses verdicts it cannot read before it trains
    assert main(["all", "--verdicts", str(tmp_path / "v.jsonl")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["all", "--verdicts", str(tmp_path / "v.jsonl"), "--flags", str(tmp_path / "f.jsonl")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
