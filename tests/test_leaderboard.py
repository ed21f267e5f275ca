"""Tests for harness/report/leaderboard.py on hand-made result rows: every aggregated number written out by hand,
the CSV read back, and the HTML page opened in headless Chromium (no console or page errors, no network requests, header
clicks reorder the rows), with a negative control that proves the error check can fail.

The browser is Debian's ``chromium`` driven by Playwright (Playwright's own browser download needs the internet).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.report.leaderboard import CSV_FIELDS, RANGE_MARK, aggregate, markdown, write_leaderboard
from harness.runs.summary import RunSummary

CHROMIUM = "/usr/bin/chromium"
TITLE = "Bench <b> & co"


def _est(mean: float, low: float | None = None, high: float | None = None) -> dict[str, float]:
    return {"mean": mean, "low": mean - 0.1 if low is None else low, "high": mean + 0.1 if high is None else high,
            "n": 8}


def _row(task: str, objective: str, n_t: int | None, mu: int, seed: int, outcome: str = "ok", after: Any = None,
         before: float = 0.2, total: float | None = None, act: float | None = None, step_s: float | None = None,
         ratio: float | None = None, curve: list[float] | None = None) -> RunSummary:
    return RunSummary.from_json({
            "run_id": f"{task}-{objective}-{n_t}-{mu}-{seed}", "sweep": "s", "task": task, "objective": objective,
            "n_t": n_t, "mu": mu, "seed": seed, "steps": 3, "outcome": outcome,
            "error": None if outcome == "ok" else "boom", "metric": "cell_accuracy" if task == "sudoku" else "accuracy",
            "before": _est(before), "after": (after if isinstance(after, dict) else _est(after)) if after is not None
            else None, "peak_total_mb": total, "peak_activations_mb": act, "step_s": step_s, "reference_s": 1.0,
            "step_time_ratio": ratio, "reward_curve": curve or [], "device": "cpu", "git_commit": None})


ROWS = [
    # sudoku bgpo n_t=4 mu=1, three ok seeds: after mean(50, 60, 70) = 60.0, range [50, 70], delta 60 - 20 = +40.0;
    # peaks max = 120 / 70; step s median(1, 3, 2) = 2.00; ratio median(1.5, 1.1, 1.3) = 1.30;
    # reward curve mean per step over the seeds that reached it: [1, 2, 2.5].
    _row("sudoku", "bgpo", 4, 1, 2, after=0.7, total=110.0, act=60.0, step_s=2.0, ratio=1.3, curve=[2.0, 3.0]),
    _row("sudoku", "bgpo", 4, 1, 0, after=0.5, total=100.0, act=50.0, step_s=1.0, ratio=1.5, curve=[0.0, 1.0, 2.0]),
    _row("sudoku", "bgpo", 4, 1, 1, after=0.6, total=120.0, act=70.0, step_s=3.0, ratio=1.1, curve=[1.0, 2.0, 3.0]),
    # vrpo n_t=4 mu=1: two ok seeds and a nan; after mean(40, 50) = 45.0 [40, 50]; the nan seed's peak (90) counts.
    _row("sudoku", "vrpo", 4, 1, 0, after=0.4, total=80.0, act=30.0, step_s=1.0, ratio=1.0),
    _row("sudoku", "vrpo", 4, 1, 1, after=0.5, total=70.0, act=35.0, step_s=2.0, ratio=2.0),
    _row("sudoku", "vrpo", 4, 1, 2, outcome="nan", total=90.0, act=40.0, step_s=4.0, ratio=4.0, curve=[0.5]),
    # diffu-grpo (no n_t), one seed: its own 95% CI, 30.0 [20.0, 40.0]; before 25 -> delta +5.0.
    _row("sudoku", "diffu-grpo", None, 1, 0, after=_est(0.3, 0.2, 0.4), before=0.25, total=60.0, act=20.0,
         step_s=0.5, ratio=0.5),
    # failures: an oom with a peak, and an error with no measurement at all; both kept, accuracy "-".
    _row("sudoku", "bgpo", 16, 1, 0, outcome="oom", total=5000.0),
    _row("sudoku", "vrpo", 16, 2, 0, outcome="error"),
    # another task sorts first (gsm8k < sudoku) whatever its accuracy.
    _row("gsm8k", "bgpo", 4, 2, 0, after=_est(0.1, 0.0, 0.25), before=0.1, total=300.0, act=150.0, step_s=5.0,
         ratio=2.5),
]
ORDER = [("gsm8k", "bgpo", 4, 2), ("sudoku", "bgpo", 4, 1), ("sudoku", "vrpo", 4, 1), ("sudoku", "diffu-grpo", None, 1),
         ("sudoku", "bgpo", 16, 1), ("sudoku", "vrpo", 16, 2)]


def test_aggregate_numbers_and_order() -> None:
    entries = aggregate(ROWS)
    assert [(e["task"], e["objective"], e["n_t"], e["mu"]) for e in entries] == ORDER
    gsm, bgpo, vrpo, diffu, oom, error = entries
    assert bgpo["seeds"] == 3 and bgpo["outcomes"] == "3 ok" and bgpo["interval"] == "seed_range"
    assert (bgpo["after_pct"], bgpo["after_low_pct"], bgpo["after_high_pct"]) == pytest.approx((60.0, 50.0, 70.0))
    assert bgpo["delta_pts"] == pytest.approx(40.0) and bgpo["before_pct"] == pytest.approx(20.0)
    assert (bgpo["peak_total_mb"], bgpo["peak_activations_mb"], bgpo["step_s"]) == (120.0, 70.0, 2.0)
    assert bgpo["step_time_ratio"] == pytest.approx(1.3)
    assert bgpo["reward_curve"] == pytest.approx([1.0, 2.0, 2.5])
    assert vrpo["outcomes"] == "2 ok, 1 nan" and vrpo["seeds"] == 3
    assert (vrpo["after_pct"], vrpo["after_low_pct"], vrpo["after_high_pct"]) == pytest.approx((45.0, 40.0, 50.0))
    assert vrpo["delta_pts"] == pytest.approx(25.0)
    assert (vrpo["peak_total_mb"], vrpo["step_s"], vrpo["step_time_ratio"]) == (90.0, 2.0, 2.0)
    assert diffu["interval"] == "ci95" and diffu["n_t"] is None
    assert (diffu["after_pct"], diffu["after_low_pct"], diffu["after_high_pct"]) == pytest.approx((30.0, 20.0, 40.0))
    assert diffu["delta_pts"] == pytest.approx(5.0)
    assert oom["outcomes"] == "1 oom" and oom["after_pct"] is None and oom["delta_pts"] is None
    assert oom["peak_total_mb"] == 5000.0 and oom["peak_activations_mb"] is None
    assert error["outcomes"] == "1 error" and error["reward_curve"] == [] and error["step_s"] is None
    assert gsm["after_pct"] == pytest.approx(10.0) and gsm["delta_pts"] == pytest.approx(0.0)

    text = markdown(entries, "T")
    lines = text.splitlines()
    assert lines[0] == "# T"
    assert (f"| sudoku | bgpo | 4 | 1 | 3 | 3 | 3 ok | 60.0 [50.0, 70.0]{RANGE_MARK} | +40.0 | - | 120.0 | 70.0 | 2.00 "
            "| 1.30 |" in lines)
    assert "| sudoku | vrpo | 4 | 1 | 3 | 3 | 2 ok, 1 nan | 45.0 [40.0, 50.0]" + RANGE_MARK + " | +25.0 |" in text
    assert "| sudoku | diffu-grpo | - | 1 | 3 | 1 | 1 ok | 30.0 [20.0, 40.0] | +5.0 | - | 60.0 | 20.0 | 0.50 | 0.50 |" \
        in lines
    assert "| sudoku | bgpo | 16 | 1 | 3 | 1 | 1 oom | - | - | - | 5000.0 | - | - | - |" in lines
    assert "| sudoku | vrpo | 16 | 2 | 3 | 1 | 1 error | - | - | - | - | - | - | - |" in lines
    assert "range over seeds" in text and "sudoku: cell_accuracy" in text and "gsm8k: accuracy" in text


def test_csv_round_trip(tmp_path: Path) -> None:
    paths = write_leaderboard(ROWS, tmp_path / "out", TITLE)
    assert set(paths) == {"md", "csv", "html"} and all(p.is_file() for p in paths.values())
    with paths["csv"].open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_FIELDS
    assert [(r["task"], r["objective"], r["n_t"], r["mu"]) for r in rows] == [
        (t, o, "" if n is None else str(n), str(m)) for t, o, n, m in ORDER]
    bgpo, vrpo, diffu, oom = rows[1:5]
    assert float(bgpo["after_pct"]) == pytest.approx(60.0) and float(bgpo["after_low_pct"]) == pytest.approx(50.0)
    assert float(bgpo["delta_pts"]) == pytest.approx(40.0) and float(bgpo["peak_total_mb"]) == 120.0
    assert bgpo["seeds"] == "3" and bgpo["interval"] == "seed_range" and bgpo["metric"] == "cell_accuracy"
    assert vrpo["outcomes"] == "2 ok, 1 nan" and float(vrpo["step_time_ratio"]) == 2.0
    assert diffu["interval"] == "ci95" and float(diffu["after_high_pct"]) == pytest.approx(40.0)
    assert oom["after_pct"] == "" and oom["delta_pts"] == "" and float(oom["peak_total_mb"]) == 5000.0


# --- the HTML page in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright (the browser is Debian's chromium)")
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()
    playwright.stop()


def open_page(browser: Any, path: Path) -> tuple[Any, list[str]]:
    """Open ``path`` in a fresh page; the list collects console errors, uncaught page errors and any request that
    leaves the file (the page must work offline)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else errors.append(f"request: {r.url}"))
    page.goto(path.as_uri())
    return page, errors


def _arms(page: Any) -> list[tuple[str, ...]]:
    """(task, objective, n_t, mu) cell texts of the table's rows, in display order."""
    return [tuple(t.strip() for t in row.split("\t")[:4]) for row in page.locator("tbody tr").all_inner_texts()]


def _expected(order: list[tuple]) -> list[tuple[str, ...]]:
    return [(t, o, "-" if n is None else str(n), str(m)) for t, o, n, m in order]


@pytest.mark.slow
def test_html_page_in_browser(tmp_path: Path, browser: Any) -> None:
    path = write_leaderboard(ROWS, tmp_path, TITLE)["html"]
    source = path.read_text(encoding="utf-8")
    assert "http://" not in source and "https://" not in source and "Bench &lt;b&gt; &amp; co" in source
    assert source.count("data:image/png;base64,") == 3
    page, errors = open_page(browser, path)
    try:
        assert errors == [] and page.title() == TITLE
        assert _arms(page) == _expected(ORDER)
        header = page.locator("th", has_text="peak total MB")
        header.click()  # ascending; the arm with no measurement last
        by_peak = [ORDER[i] for i in (3, 2, 1, 0, 4, 5)]  # 60, 90, 120, 300, 5000, missing
        assert _arms(page) == _expected(by_peak)
        header.click()  # descending; missing still last
        assert _arms(page) == _expected([by_peak[i] for i in (4, 3, 2, 1, 0, 5)])
        page.locator("th", has_text="objective").click()  # text: alphabetical, stable for ties
        assert [a[1] for a in _arms(page)] == ["bgpo", "bgpo", "bgpo", "diffu-grpo", "vrpo", "vrpo"]
        assert page.locator("img").count() == 3
        shot = tmp_path / "leaderboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert errors == []  # none from the clicks either
    finally:
        page.close()


@pytest.mark.slow
def test_browser_check_catches_script_error(tmp_path: Path, browser: Any) -> None:
    """Negative control: the same page with a call to an undefined function must be reported."""
    source = write_leaderboard(ROWS[:3], tmp_path, "t")["html"].read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(source.replace("</body>", "<script>undefinedFunction()</script></body>"), encoding="utf-8")
    page, errors = open_page(browser, broken)
    page.close()
    assert any("undefinedFunction" in e for e in errors), errors


def test_runs_of_different_lengths_are_different_entries() -> None:
    short = [dataclasses.replace(r, steps=3) for r in ROWS if r.objective == "diffu-grpo"]
    longer = [dataclasses.replace(r, steps=30, run_id=r.run_id + "-long") for r in short]
    entries = aggregate(short + longer)
    assert [(e["objective"], e["steps"]) for e in entries] == [("diffu-grpo", 3), ("diffu-grpo", 30)]
