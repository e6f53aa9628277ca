"""The time-based rules at their edges, judged at a moment the test chooses: lock staleness,
approval expiry, staging soak, freeze windows (boundary minutes, midnight, week, DST), backup
retention. Every boundary is checked on both sides, so an off-by-one comparison fails here."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deploy import backup, environment
from deploy.clock import as_utc, stamp, system_clock
from deploy.config import Project, load_project
from deploy.hosts import Host
from deploy.policy import promotion
from deploy.policy.actors import Actor
from deploy.state import (
    HEARTBEAT_STALE_AFTER_S,
    LOCK_STALE_AFTER_S,
    DeployLock,
    Layout,
    LockInfo,
    held_too_long,
)
from tests import support

T0 = datetime(2026, 3, 6, 12, 0, 0, tzinfo=UTC)  # a Friday
TICK = timedelta(microseconds=1)
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def local(tz: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz))


def clock_at(at: datetime):
    return lambda: at


# -- the clock ---------------------------------------------------------------------------------


def test_the_system_clock_is_aware_utc_and_a_naive_now_is_refused():
    assert system_clock().utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="no timezone"):
        as_utc(datetime(2026, 3, 6, 12, 0))
    with pytest.raises(ValueError, match="no timezone"):
        promotion.in_freeze(
            {"start": "0 18 * * 5", "end": "0 8 * * 1", "timezone": "UTC"},
            now=datetime(2026, 3, 6, 18, 0),
        )
    assert stamp(local(BERLIN, 2026, 7, 1, 14, 0, 5)) == "2026-07-01T12:00:05Z"


# -- the deploy lock ---------------------------------------------------------------------------


def holder(since: datetime, *, host: str = "another-machine", pid: int = 4242) -> LockInfo:
    return LockInfo("bo@example.com", pid, host, "deploy", "r1", stamp(since), since.timestamp())


STALE = timedelta(seconds=LOCK_STALE_AFTER_S)


def test_a_lock_held_exactly_the_limit_is_not_stale_one_tick_more_is():
    info = holder(T0)
    assert not held_too_long(info, now=T0 + STALE - timedelta(seconds=1))
    assert not held_too_long(info, now=T0 + STALE)
    assert held_too_long(info, now=T0 + STALE + TICK)


def test_the_limit_is_a_parameter_and_a_holder_without_a_start_never_ages_out():
    assert held_too_long(holder(T0), now=T0 + timedelta(seconds=61), stale_after_s=60)
    assert not held_too_long(holder(T0), now=T0 + timedelta(seconds=60), stale_after_s=60)
    torn = LockInfo("unknown", 0, "unknown", "unknown", "", "unknown", 0.0)
    assert not held_too_long(torn, now=T0 + timedelta(days=365))


def test_the_lock_judges_staleness_by_its_clock():
    info = holder(T0)  # another machine: only the age can make it stale
    layout = Layout("/nonexistent-home")
    assert not DeployLock(Host(), layout, clock=clock_at(T0 + STALE)).is_stale(info)
    assert DeployLock(Host(), layout, clock=clock_at(T0 + STALE + TICK)).is_stale(info)


def test_the_holder_records_the_clocks_time_and_a_beating_holder_is_stale_only_once_silent(
    tmp_path: Path,
):
    lock = DeployLock(Host(), Layout(str(tmp_path)), clock=clock_at(T0))
    lock.acquire(who="bo@example.com", command="deploy", release="r1")
    info = lock.holder()
    assert info is not None
    assert (info.time, info.since, info.pid, info.beat) == (
        "2026-03-06T12:00:00Z",
        T0.timestamp(),
        os.getpid(),
        T0.timestamp(),
    )
    # this very process holds it and its heartbeat says T0: the heartbeat's age decides, not the
    # lock's (an hour-long deploy that still beats is alive)
    silent = timedelta(seconds=HEARTBEAT_STALE_AFTER_S)
    at_limit = DeployLock(Host(), Layout(str(tmp_path)), clock=clock_at(T0 + silent))
    past_limit = DeployLock(Host(), Layout(str(tmp_path)), clock=clock_at(T0 + silent + TICK))
    assert not at_limit.is_stale(info)
    assert past_limit.is_stale(info)
    lock.release()


# -- approvals and soak ------------------------------------------------------------------------

TTL = 86400.0


def test_an_approval_holds_through_its_expiry_second_and_not_after():
    given = T0
    expiry = given + timedelta(seconds=TTL)
    assert promotion.approval_current(given, now=expiry - timedelta(seconds=1), ttl_s=TTL)
    assert promotion.approval_current(given, now=expiry, ttl_s=TTL)
    assert not promotion.approval_current(given, now=expiry + TICK, ttl_s=TTL)
    assert not promotion.approval_current(given, now=expiry + timedelta(seconds=1), ttl_s=TTL)


def test_staging_soak_is_met_at_exactly_the_time_it_needs():
    deployed = T0
    assert not promotion.soak_met(deployed, now=deployed + timedelta(hours=1) - TICK, need_s=3600)
    assert promotion.soak_met(deployed, now=deployed + timedelta(hours=1), need_s=3600)
    assert promotion.soak_met(deployed, now=deployed, need_s=0)


# -- freeze windows ----------------------------------------------------------------------------


def window(start: str, end: str, tz: str = "UTC") -> dict[str, str]:
    return {"start": start, "end": end, "timezone": tz}


WEEKEND = window("0 18 * * 5", "0 8 * * 1")  # Friday 18:00 until Monday 08:00


def frozen_at(w: dict[str, str], *moments: datetime) -> list[bool]:
    return [promotion.in_freeze(w, now=m) for m in moments]


def test_a_freeze_starts_on_its_start_minute_not_the_instant_before():
    fri = datetime(2026, 3, 6, tzinfo=UTC)
    assert frozen_at(
        WEEKEND,
        fri.replace(hour=17, minute=59, second=59),
        fri.replace(hour=17, minute=59, second=59, microsecond=999999),
        fri.replace(hour=18),
        fri.replace(hour=18, second=1),
    ) == [False, False, True, True]


def test_a_freeze_ends_on_its_end_minute_across_the_week_boundary():
    sun, mon = datetime(2026, 3, 8, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC)
    assert frozen_at(
        WEEKEND,
        sun.replace(hour=23, minute=59, second=59),
        mon,  # a new week (and a new day) does not end it
        mon.replace(hour=7, minute=59, second=59, microsecond=999999),
        mon.replace(hour=8),
        mon.replace(hour=8, second=1),
    ) == [True, True, True, False, False]


def test_sunday_may_be_written_as_zero_or_seven():
    sat_night = window("0 22 * * 6", "0 6 * * 0")
    as_seven = window("0 22 * * 6", "0 6 * * 7")
    sun = datetime(2026, 3, 8, tzinfo=UTC)
    moments = (sun.replace(hour=5, minute=59, second=59), sun.replace(hour=6))
    assert frozen_at(sat_night, *moments) == frozen_at(as_seven, *moments) == [True, False]


def test_a_nightly_freeze_holds_across_midnight_in_its_timezone():
    nightly = window("0 22 * * *", "0 6 * * *", BERLIN)  # CET is UTC+1 in March
    assert frozen_at(
        nightly,
        local(BERLIN, 2026, 3, 10, 21, 59, 59),
        local(BERLIN, 2026, 3, 10, 22, 0, 0),
        local(BERLIN, 2026, 3, 10, 23, 59, 59),
        local(BERLIN, 2026, 3, 11, 0, 0, 0),
        local(BERLIN, 2026, 3, 11, 5, 59, 59),
        local(BERLIN, 2026, 3, 11, 6, 0, 0),
    ) == [False, True, True, True, True, False]
    # the same instants in UTC: 21:00 UTC is 22:00 in Berlin
    assert frozen_at(nightly, datetime(2026, 3, 10, 20, 59, 59, tzinfo=UTC)) == [False]
    assert frozen_at(nightly, datetime(2026, 3, 10, 21, 0, 0, tzinfo=UTC)) == [True]


def test_a_window_whose_start_and_end_fall_on_one_minute_is_open_then():
    # daily from midnight, but Monday's midnight is also an end: [start, end) is empty there
    w = window("0 0 * * *", "0 0 * * 1")
    assert frozen_at(
        w,
        datetime(2026, 3, 8, 23, 59, 59, tzinfo=UTC),  # Sunday: frozen since Sunday 00:00
        datetime(2026, 3, 9, 0, 0, 0, tzinfo=UTC),  # Monday 00:00: the end wins the tie
        datetime(2026, 3, 9, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 3, 10, 0, 0, 0, tzinfo=UTC),  # Tuesday 00:00: frozen again
    ) == [True, False, False, True]


def test_a_weekend_freeze_follows_the_local_clock_over_the_autumn_change():
    # Berlin leaves summer time on Sunday 2026-10-25: Friday's 18:00 is 16:00 UTC (CEST),
    # Monday's 08:00 is 07:00 UTC (CET); a fixed offset would end the freeze at 06:00 UTC
    w = window("0 18 * * 5", "0 8 * * 1", BERLIN)
    assert frozen_at(
        w,
        datetime(2026, 10, 23, 15, 59, 59, tzinfo=UTC),
        datetime(2026, 10, 23, 16, 0, 0, tzinfo=UTC),
        datetime(2026, 10, 26, 6, 30, 0, tzinfo=UTC),
        datetime(2026, 10, 26, 6, 59, 59, tzinfo=UTC),
        datetime(2026, 10, 26, 7, 0, 0, tzinfo=UTC),
    ) == [False, True, True, True, False]


def test_a_weekend_freeze_follows_the_local_clock_over_the_spring_change():
    # New York enters daylight time on Sunday 2026-03-08: Friday's 18:00 is 23:00 UTC (EST),
    # Monday's 08:00 is 12:00 UTC (EDT)
    w = window("0 18 * * 5", "0 8 * * 1", NEW_YORK)
    assert frozen_at(
        w,
        datetime(2026, 3, 6, 22, 59, 59, tzinfo=UTC),
        datetime(2026, 3, 6, 23, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 9, 11, 59, 59, tzinfo=UTC),
        datetime(2026, 3, 9, 12, 0, 0, tzinfo=UTC),
    ) == [False, True, True, False]


def test_an_end_in_the_skipped_hour_does_not_cancel_the_start_after_it():
    # frozen all day but for a 02:30-03:00 batch slot; on 2026-03-29 Berlin's clocks jump from
    # 02:00 to 03:00, so the slot never comes: the freeze must go on, not lapse for a day
    w = window("0 3 * * *", "30 2 * * *", BERLIN)
    assert frozen_at(
        w,
        datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC),  # 01:59:59 CET
        datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC),  # 03:00 CEST
        datetime(2026, 3, 29, 10, 0, 0, tzinfo=UTC),  # noon CEST
        datetime(2026, 3, 30, 0, 29, 59, tzinfo=UTC),  # 02:29:59 CEST the next night
        datetime(2026, 3, 30, 0, 30, 0, tzinfo=UTC),  # 02:30 CEST: the slot opens
    ) == [True, True, True, True, False]


def test_a_start_in_the_skipped_hour_takes_effect_when_the_clock_jumps_past_it():
    w = window("30 2 * * 0", "0 5 * * 0", BERLIN)
    assert frozen_at(
        w,
        datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC),  # 01:59:59 CET
        datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC),  # 03:00 CEST, just past 02:30
        datetime(2026, 3, 29, 2, 59, 59, tzinfo=UTC),  # 04:59:59 CEST
        datetime(2026, 3, 29, 3, 0, 0, tzinfo=UTC),  # 05:00 CEST
    ) == [False, True, True, False]


def test_in_the_repeated_autumn_hour_the_window_follows_the_wall_clock():
    # 01:00-02:30 on Sunday 2026-10-25 in Berlin, where 02:00-03:00 happens twice
    w = window("0 1 * * 0", "30 2 * * 0", BERLIN)
    assert frozen_at(
        w,
        datetime(2026, 10, 24, 22, 59, 59, tzinfo=UTC),  # 00:59:59 CEST
        datetime(2026, 10, 24, 23, 0, 0, tzinfo=UTC),  # 01:00 CEST
        datetime(2026, 10, 25, 0, 29, 59, tzinfo=UTC),  # 02:29:59 CEST
        datetime(2026, 10, 25, 0, 30, 0, tzinfo=UTC),  # 02:30 CEST: ends
        datetime(2026, 10, 25, 1, 0, 0, tzinfo=UTC),  # 02:00 CET: the clock reads 02:00 again
        datetime(2026, 10, 25, 1, 30, 0, tzinfo=UTC),  # 02:30 CET: ends again
    ) == [False, True, True, False, True, False]


def test_active_freeze_names_the_window_now_falls_in_and_reads_the_clock_when_not_given():
    new_year = window("0 0 1 1 *", "0 0 2 1 *")
    pol = promotion.Policy(freezes=(WEEKEND, new_year))
    jan1 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)  # a Wednesday: only the new-year window
    assert promotion.active_freeze(pol, jan1) == new_year
    assert promotion.active_freeze(pol, clock=clock_at(jan1)) == new_year
    assert promotion.active_freeze(pol, clock=clock_at(jan1 + timedelta(hours=12))) is None


# -- the promotion checks judge one moment -----------------------------------------------------


def project(tmp_path: Path, *, freeze: dict[str, str] | None = None, soak_s: int = 0) -> Project:
    """The repository's policy (approvals last a day), with staging's soak and a freeze window."""
    text = support.minimal_policy()
    assert "approval_ttl_s = 86400\n" in text and "soak_s = 0\n" in text
    if freeze:
        text += "\n[[promotion.freeze]]\n" + "".join(f'{k} = "{v}"\n' for k, v in freeze.items())
    text = text.replace("soak_s = 0\n", f"soak_s = {soak_s}\n", 1)  # staging's
    (tmp_path / "stageflow.toml").write_text(text)
    support.write_envs(tmp_path)
    return load_project(tmp_path)


COMMIT = "c0ffee" * 6 + "abcd"
APPROVER = Actor("al@example.com", "human")


def pending(approved_at: datetime) -> dict:
    return {
        "id": 7,
        "ref": "v1.4.0",
        "commit": COMMIT,
        "requester": {"name": "bo@example.com", "kind": "human"},
        "severity": "P4",
        "status": "approved",
        "approvals": [
            {
                "actor": APPROVER.name,
                "kind": "human",
                "time": stamp(approved_at),
                "ts": approved_at.timestamp(),
                "commit": COMMIT,
            }
        ],
        "rejections": [],
    }


def rule(proj: Project, req: dict, name: str, **kw):
    return dict(promotion.checks(proj, req, actor=APPROVER, **kw))[name]()


def signed_pending(tmp_path: Path, proj: Project, approved_at: datetime) -> dict:
    """pending(), its approval signed by a real ed25519 key that prod trusts, over a gate file."""
    import subprocess

    from deploy.policy import keys, trust
    from deploy.policy.actors import statement

    key = tmp_path / "al_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"{APPROVER.name} {key.with_suffix('.pub').read_text()}")
    trust.bootstrap(proj, signers, actor="test")
    gate = tmp_path / "dist" / "release-gate" / f"{COMMIT}.GA.json"
    gate.parent.mkdir(parents=True)
    gate.write_text("{}")
    req = pending(approved_at)
    fields = {"request": 7, "ref": "v1.4.0", "commit": COMMIT, "tree": "",
              "expires": stamp(approved_at + timedelta(seconds=TTL)),
              "gate": {"file": str(gate.relative_to(tmp_path)),
                       "sha256": promotion._sha256(gate)}, "staging": None}  # fmt: skip
    proof = keys.sign(
        statement("approve", "prod", clock=lambda: approved_at, **fields), key=str(key)
    )
    req["approvals"][0].update(proof)
    return req


def test_the_approval_check_expires_after_its_last_second(tmp_path: Path):
    proj = project(tmp_path)
    req = signed_pending(tmp_path, proj, T0)
    expiry = T0 + timedelta(seconds=TTL)
    assert rule(proj, req, "approval", now=expiry).ok
    assert rule(proj, req, "approval", clock=clock_at(expiry)).ok
    assert rule(proj, req, "approval", now=expiry.timestamp()).ok  # epoch seconds, as before
    late = rule(proj, req, "approval", now=expiry + timedelta(seconds=1))
    assert not late.ok and "approval expired" in late.detail


def test_the_freeze_check_judges_the_moment_it_was_given(tmp_path: Path):
    proj = project(tmp_path, freeze=window("0 0 1 1 *", "0 0 2 1 *"))
    req = pending(T0)
    during = rule(proj, req, "freeze-window", now=datetime(2027, 1, 1, 23, 59, 59, tzinfo=UTC))
    assert not during.ok and "break-glass" in during.detail
    after = rule(proj, req, "freeze-window", now=datetime(2027, 1, 2, 0, 0, 0, tzinfo=UTC))
    assert after.ok, after.detail
    broken = rule(
        proj,
        req,
        "freeze-window",
        now=datetime(2027, 1, 1, 12, 0, tzinfo=UTC),
        break_glass="P1 outage",
    )
    assert broken.ok and "break-glass" in broken.detail


def test_the_soak_check_passes_at_exactly_the_soak_time(tmp_path: Path):
    proj = project(tmp_path, soak_s=3600)
    staged = Layout(str(proj.env("staging").data_dir))
    Path(staged.state).mkdir(parents=True)
    entry = {"id": "h1", "time": stamp(T0), "env": "staging", "release": "r1", "commit": COMMIT}
    entry |= {"ref": "v1.4.0", "actor": "ci", "kind": "deploy", "status": "success"}
    Path(staged.history).write_text(json.dumps(entry) + "\n")
    req = pending(T0)
    early = rule(proj, req, "soak", now=T0 + timedelta(seconds=3599))
    assert not early.ok and "soaked 3599s of 3600s" in early.detail
    assert rule(proj, req, "soak", now=T0 + timedelta(seconds=3600)).ok


# -- backup retention --------------------------------------------------------------------------


def backups(*taken: datetime) -> list[dict]:
    return [{"id": f"b{i}", "time": t.isoformat(timespec="seconds")} for i, t in enumerate(taken)]


def ids(drop: list[dict]) -> list[str]:
    return [b["id"] for b in drop]


def test_retention_keeps_exactly_the_newest_n():
    four = backups(*(T0 + timedelta(days=d) for d in range(4)))
    now = T0 + timedelta(days=4)
    assert ids(backup.expired_backups(four, now=now, keep=4, max_age_days=None)) == []
    assert ids(backup.expired_backups(four, now=now, keep=3, max_age_days=None)) == ["b0"]
    assert ids(backup.expired_backups(four, now=now, keep=1, max_age_days=None)) == [
        "b0",
        "b1",
        "b2",
    ]
    assert ids(backup.expired_backups(four, now=now, keep=0, max_age_days=None)) == []


def test_retention_by_age_keeps_a_backup_exactly_that_old():
    taken = backups(T0, T0 + timedelta(days=1), T0 + timedelta(days=8))
    at_limit = T0 + timedelta(days=7)
    assert ids(backup.expired_backups(taken, now=at_limit, keep=0, max_age_days=7)) == []
    assert ids(backup.expired_backups(taken, now=at_limit + TICK, keep=0, max_age_days=7)) == ["b0"]
    # the newest is kept however old it is
    later = T0 + timedelta(days=100)
    assert ids(backup.expired_backups(taken, now=later, keep=0, max_age_days=7)) == ["b0", "b1"]


def test_retention_never_drops_a_backup_for_an_age_it_cannot_read():
    taken = [
        {"id": "b0", "time": "2026-03-06T12:00:00"},  # no timezone
        {"id": "b1", "time": "yesterday"},
        {"id": "b2"},
        {"id": "b3", "time": T0.isoformat()},
    ]
    now = T0 + timedelta(days=365)
    assert ids(backup.expired_backups(taken, now=now, keep=0, max_age_days=7)) == []
    assert ids(backup.expired_backups(taken, now=now, keep=2, max_age_days=7)) == ["b0", "b1"]


def test_prune_drops_by_its_clock(tmp_path: Path):
    proj = project(tmp_path)
    home = Path(Layout(str(proj.env("dev").data_dir)).backups)
    home.mkdir(parents=True)
    for i, day in enumerate((0, 1, 2)):
        bid = f"2026030{6 + day}T120000000000Z"
        info = {"id": bid, "time": (T0 + timedelta(days=day)).isoformat(timespec="seconds")}
        (home / f"{bid}.json").write_text(json.dumps(info))
        (home / f"{bid}.dump").write_text(f"dump {i}")
    dropped = environment.prune_backups(
        proj, "dev", keep=10, max_age_days=1, clock=clock_at(T0 + timedelta(days=2))
    )
    assert dropped == ["20260306T120000000000Z"]
    assert sorted(p.name for p in home.iterdir()) == [
        "20260307T120000000000Z.dump",
        "20260307T120000000000Z.json",
        "20260308T120000000000Z.dump",
        "20260308T120000000000Z.json",
    ]
