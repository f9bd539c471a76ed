"""Deploying changed code over runs in flight: what each kind of change does to a run that
sleeps through the deploy, that `stepwell check` reports it before the deploy, that
`step.patched` keeps old runs on the old branch across restarts, and that an exported history
replays locally with `stepwell.testing.replay`.

Every test changes the code between engines on purpose, so its engines skip the dev-time
determinism check (`counts_executions`): the engines behave as in production."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import stepwell
from stepwell import service_deploy
from stepwell.service import Service
from stepwell.testing import DivergenceError, VirtualClock, replay

pytestmark = pytest.mark.counts_executions

Handler = Callable[[stepwell.Context, stepwell.Step], Any]


def app_with(handler: Handler) -> stepwell.App:
    app = stepwell.App("shop")
    app.function(id="order", trigger="shop/order", retries=0)(handler)
    return app


def v1(effects: list[str]) -> stepwell.App:
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: effects.append("reserve") or "r")
        await step.run("charge", lambda amount: effects.append(f"charge {amount}") or amount, 10)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


def changed_kind(effects: list[str]) -> stepwell.App:
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: effects.append("reserve") or "r")
        await step.sleep("charge", "1s")                     # was a run step
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


def changed_args(effects: list[str]) -> stepwell.App:
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: effects.append("reserve") or "r")
        await step.run("charge", lambda amount: effects.append(f"charge {amount}") or amount, 12)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


def reordered(effects: list[str]) -> stepwell.App:
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("charge", lambda amount: effects.append(f"charge {amount}") or amount, 10)
        await step.run("reserve", lambda: effects.append("reserve") or "r")
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


def inserted(effects: list[str]) -> stepwell.App:
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: effects.append("reserve") or "r")
        await step.run("fraud-check", lambda: effects.append("fraud-check") or "ok")
        await step.run("charge", lambda amount: effects.append(f"charge {amount}") or amount, 10)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


def removed(effects: list[str]) -> stepwell.App:
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("charge", lambda amount: effects.append(f"charge {amount}") or amount, 10)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


def patched(effects: list[str]) -> stepwell.App:
    """`inserted`, done safely: the new step only for runs not yet past it."""
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: effects.append("reserve") or "r")
        if await step.patched("fraud-check"):
            await step.run("fraud-check", lambda: effects.append("fraud-check") or "ok")
        await step.run("charge", lambda amount: effects.append(f"charge {amount}") or amount, 10)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: effects.append("ship") or "s")
        return "done"
    return app_with(order)


async def start_old_run(make_engine: Any) -> str:
    """A run of v1 that sleeps through the deploy (reserve and charge recorded)."""
    async with make_engine(v1([])) as engine:
        [run] = await engine.runs(event_id=await engine.send("shop/order", {}))
        await engine.idle()
        assert (await engine.get_run(run.id)).status == "running"   # type: ignore[union-attr]
        return run.id


async def deploy(make_engine: Any, clock: VirtualClock, app: stepwell.App,
                 run_id: str) -> stepwell.Run:
    """The new code takes over and the old run wakes up."""
    async with make_engine(app) as engine:
        await clock.advance("1d")
        return await engine.wait(run_id, timeout=30)


CASES = {
    # kind: (new code, step the check names, what happens to the old run without a fix)
    "changed-kind": (changed_kind, "charge", "failed"),
    "changed-args": (changed_args, "charge", "failed"),
    "reordered": (reordered, "charge", "order warning"),
    "inserted": (inserted, "fraud-check", "runs out of order"),
    "removed": (removed, "reserve", "order warning"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_the_check_catches_each_divergence_that_really_breaks_runs(
        kind: str, make_engine: Any, clock: VirtualClock, db_url: str) -> None:
    make, step_id, harm = CASES[kind]
    run_id = await start_old_run(make_engine)

    report = await service_deploy.check_database([make([])], db_url)
    assert not report.ok
    [function] = report.functions.values()
    assert (function.unfinished, function.unfinished_clean) == (1, 0)
    [(diverged_run, finished, divergence)] = function.divergences
    assert (diverged_run, finished, divergence.kind, divergence.step_id) == (
        run_id, False, kind, step_id)
    assert "patched" in divergence.fix or "id" in divergence.fix
    assert f"step '{step_id}' ({kind})" in report.text()

    # The divergence is real: deployed anyway, the old run breaks.
    effects: list[str] = []
    run = await deploy(make_engine, clock, make(effects), run_id)
    if harm == "failed":
        assert run.status == "failed" and run.error is not None
        assert run.error["name"] == "NonDeterminismError"
    elif harm == "order warning":
        assert run.status == "completed"
        assert any("order changed" in w for w in run.warnings), run.warnings
    else:               # the new step runs after the recorded step that follows it in the code
        assert run.status == "completed"
        assert effects == ["fraud-check", "ship"]


async def test_unchanged_code_and_patched_code_pass_the_check(
        make_engine: Any, db_url: str) -> None:
    await start_old_run(make_engine)
    for make in (v1, patched):
        report = await service_deploy.check_database([make([])], db_url)
        assert report.ok, report.text()
        [function] = report.functions.values()
        assert (function.unfinished, function.unfinished_clean) == (1, 1)
        assert "OK: safe to deploy" in report.text()


async def test_patched_keeps_old_runs_on_the_old_branch_across_restarts(
        make_engine: Any, clock: VirtualClock) -> None:
    old_id = await start_old_run(make_engine)
    effects: list[str] = []
    async with make_engine(patched(effects)) as engine:
        [new] = await engine.runs(event_id=await engine.send("shop/order", {}))
        await engine.idle()
        await clock.advance("1h")          # both runs replayed and asleep; neither done
    assert effects == ["reserve", "fraud-check", "charge 10"]     # the new run only
    effects.clear()
    async with make_engine(patched(effects)) as engine:           # a restart, then wake-up
        await clock.advance("1d")
        old, new = await engine.wait(old_id, timeout=30), await engine.wait(new.id, timeout=30)
    assert (old.status, new.status) == ("completed", "completed")
    assert effects == ["ship", "ship"] and old.warnings == [] and new.warnings == []
    steps = {run.id: [(s.id, s.kind) for s in run.steps] for run in (old, new)}
    assert ("fraud-check", "run") not in steps[old_id]
    assert ("fraud-check", "run") in steps[new.id]


async def test_removing_a_patch_is_reported_and_deprecate_patch_retires_it(
        make_engine: Any, clock: VirtualClock, db_url: str) -> None:
    async with make_engine(patched([])) as engine:
        [run] = await engine.runs(event_id=await engine.send("shop/order", {}))
        await engine.idle()

    async def retired(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: "r")
        await step.deprecate_patch("fraud-check")
        await step.run("fraud-check", lambda: "ok")
        await step.run("charge", lambda amount: amount, 10)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: "s")
        return "done"

    assert (await service_deploy.check_database([app_with(retired)], db_url)).ok
    report = await service_deploy.check_database([inserted([])], db_url)   # patch call gone
    [(_, _, divergence)] = report.functions["shop/order"].divergences
    assert (divergence.kind, divergence.step_id) == ("removed", "fraud-check")
    assert "deprecate_patch" in divergence.fix
    async with make_engine(app_with(retired)) as engine:
        await clock.advance("1d")
        assert (await engine.wait(run.id, timeout=30)).status == "completed"


async def test_an_old_branch_run_under_deprecate_patch_is_a_divergence(
        make_engine: Any, clock: VirtualClock, db_url: str) -> None:
    old_id = await start_old_run(make_engine)
    # Resumed under the patched code, the old run records patched() = False, then finishes.
    assert (await deploy(make_engine, clock, patched([]), old_id)).status == "completed"

    async def retired(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: "r")
        await step.deprecate_patch("fraud-check")
        await step.run("fraud-check", lambda: "ok")
        await step.run("charge", lambda amount: amount, 10)
        await step.sleep("cool-off", "1d")
        await step.run("ship", lambda: "s")
        return "done"

    report = await service_deploy.check_database([app_with(retired)], db_url)
    [(run_id, finished, divergence)] = report.functions["shop/order"].divergences
    assert (run_id, finished, divergence.kind) == (old_id, True, "deprecated-patch")
    assert report.ok            # a finished run is not affected by a deploy


async def test_runs_of_a_deleted_function_fail_the_check(make_engine: Any, db_url: str) -> None:
    await start_old_run(make_engine)
    other = stepwell.App("shop")

    @other.function(id="refund", trigger="shop/refund")
    async def refund(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    report = await service_deploy.check_database([other], db_url)
    assert not report.ok and report.missing == {"shop/order": 1}
    assert "renamed or deleted" in report.text()


async def test_finished_runs_are_sampled_but_do_not_fail_the_check(
        make_engine: Any, clock: VirtualClock, db_url: str) -> None:
    run_id = await start_old_run(make_engine)
    await deploy(make_engine, clock, v1([]), run_id)
    report = await service_deploy.check_database([changed_args([])], db_url)
    [function] = report.functions.values()
    assert (function.finished, function.finished_clean, function.unfinished) == (1, 0, 0)
    assert report.ok
    assert (await service_deploy.check_database([changed_args([])], db_url, sample=0)
            ).histories == 0


async def test_an_exported_history_replays_locally_and_in_the_check(
        make_engine: Any, tmp_path: Path) -> None:
    run_id = await start_old_run(make_engine)
    async with make_engine(v1([])) as engine:
        history = await Service(engine).run_history(run_id)
    path = tmp_path / "histories" / f"{run_id}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(history))

    result = await replay(path, v1([]))
    assert (result.stopped, result.steps_replayed, result.executed) == (True, 3, [])
    effects: list[str] = []
    result = await replay(path, v1(effects), continue_=True)
    assert (result.output, result.executed) == ("done", ["ship"])
    assert effects == ["ship"]                     # recorded steps are not run again
    with pytest.raises(DivergenceError, match=r"step 'charge' \(changed-args\)"):
        await replay(path, changed_args([]))

    report = await service_deploy.check_histories(
        [changed_args([])], service_deploy.read_folder(path.parent))
    assert not report.ok and report.histories == 1


async def test_bad_history_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{\"format\": \"something-else\"}")
    with pytest.raises(service_deploy.HistoryError, match="not a stepwell run history"):
        service_deploy.read_folder(tmp_path)
    bad.write_text("not json")
    with pytest.raises(service_deploy.HistoryError, match="not JSON"):
        service_deploy.read_folder(tmp_path)
    with pytest.raises(service_deploy.HistoryError, match="not a folder"):
        service_deploy.read_folder(tmp_path / "missing")


async def test_runs_record_the_version_of_the_code_they_started_on(make_engine: Any) -> None:
    tagged = stepwell.App("tagged", version="2026.12.1")

    @tagged.function(id="own", trigger="t/own", version="own-1")
    async def own(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @tagged.function(id="app-wide", trigger="t/app")
    async def app_wide(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    first, second = v1([]), changed_args([])
    fingerprints = {first.functions["order"].version, second.functions["order"].version}
    assert len(fingerprints) == 2 and all(v.startswith("code:") for v in fingerprints)
    assert v1([]).functions["order"].version == first.functions["order"].version
    async with make_engine(tagged, first) as engine:
        ids = [await engine.send(name, {}) for name in ("t/own", "t/app", "shop/order")]
        await engine.idle()
        versions = [(await engine.runs(event_id=i))[0].version for i in ids]
        history = await Service(engine).run_history((await engine.runs(event_id=ids[2]))[0].id)
        shown = await Service(engine).get_run((await engine.runs(event_id=ids[0]))[0].id)
    assert versions == ["own-1", "2026.12.1", first.functions["order"].version]
    assert history["run"]["version"] == first.functions["order"].version
    assert shown["version"] == "own-1"


def test_a_bad_version_is_a_config_error() -> None:
    with pytest.raises(stepwell.ConfigError, match="version must be a non-empty printable"):
        stepwell.App("x", version="")
    app = stepwell.App("x")
    with pytest.raises(stepwell.ConfigError, match="function 'f': version must be"):
        app.function(id="f", trigger="x/y", version="a\nb")


async def test_a_missing_sqlite_database_is_named_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(service_deploy.HistoryError, match="no database at"):
        await service_deploy.check_database([v1([])], f"sqlite:///{missing}")
    assert not missing.exists()
    empty = await service_deploy.check_histories([v1([])], [])
    assert "no recorded runs were found" in empty.text()


async def test_versions_show_old_runs_draining_then_drained(
        make_engine: Any, clock: VirtualClock) -> None:
    old_id = await start_old_run(make_engine)
    new_app = changed_args([])
    async with make_engine(new_app) as engine:
        service = Service(engine)
        await engine.send("shop/order", {})
        await engine.idle()
        [order] = await service.versions()
        assert (order["function_id"], order["current"]) == (
            "shop/order", new_app.functions["order"].version)
        by_version = {v["version"]: (v["runs"], v["current"]) for v in order["versions"]}
        assert by_version == {v1([]).functions["order"].version: (1, False),
                              new_app.functions["order"].version: (1, True)}
        assert not order["drained"]
        await engine.cancel(old_id)
        [order] = await service.versions()
        assert order["drained"] and [v["runs"] for v in order["versions"]] == [1]
