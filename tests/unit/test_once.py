"""Once: a failure said when it starts or changes, reminded of, and said once to be over.

The sites that use it (the loop's steps, the state file, the metrics textfile,
the journal) are tested through the daemon and the event log in test_daemon.py,
test_state.py, test_metrics.py and test_log_fallback.py; this is the rule itself.
"""

from __future__ import annotations

from vramwatch.once import Once

S = 10**9


def said(once: Once, failures: list[tuple[int, str | None]]) -> list[tuple[int, str]]:
    """Feed (second, error or None for "it worked"); what would be said."""
    out = []
    for second, error in failures:
        if error is None:
            if once.worked():
                out.append((second, "recovered"))
        elif once.failed(error, second * S):
            out.append((second, error))
    return out


def test_a_failure_is_said_when_it_starts_and_changes_and_its_end_once() -> None:
    once = Once()

    actual = said(
        once,
        [(0, None), (1, "EIO"), (2, "EIO"), (3, "ENOSPC"), (4, "ENOSPC"), (5, None), (6, None)],
    )

    assert [(1, "EIO"), (3, "ENOSPC"), (5, "recovered")] == actual


def test_a_failure_that_goes_on_is_said_again_a_reminder_period_after_it_was_said() -> None:
    once = Once(300 * S)

    actual = said(once, [(0, "EIO"), (299, "EIO"), (300, "EIO"), (599, "EIO"), (600, "EIO")])

    assert [(0, "EIO"), (300, "EIO"), (600, "EIO")] == actual


def test_a_changed_text_starts_the_reminder_period_again() -> None:
    once = Once(300 * S)

    actual = said(once, [(0, "EIO"), (200, "ENOSPC"), (300, "ENOSPC"), (500, "ENOSPC")])

    assert [(0, "EIO"), (200, "ENOSPC"), (500, "ENOSPC")] == actual


def test_without_changes_only_the_start_is_news_until_it_works_again() -> None:
    once = Once(changes=False)

    actual = said(once, [(0, "EACCES"), (1, "EROFS"), (10**6, "EIO"), (2, None), (3, "EIO")])

    assert [(0, "EACCES"), (2, "recovered"), (3, "EIO")] == actual


def test_failing_is_whether_a_failure_was_said_and_has_not_ended() -> None:
    once = Once()
    before = once.failing
    once.failed("EIO")
    during = once.failing
    once.worked()

    assert (False, True, False) == (before, during, once.failing)
