"""The proxy's belief about what the server holds under each name (policyc.proxy.names), driven
by scripted answers: the rules that keep it from ever differing from the server's."""

from __future__ import annotations

from policyc.proxy.names import Found, NameBook, Refuse, Wait, WaitAnswers


def test_a_creation_is_usable_in_its_own_batch_and_waits_across_batches() -> None:
    book: NameBook[str] = NameBook("statement")
    _slot, answered = book.create("s", "SELECT 1", batch=0)
    assert isinstance(book.lookup("s", batch=0), Found)  # a failure would skip the rest
    assert isinstance(book.lookup("s", batch=1), Wait)  # not yet answered: wait
    answered(True)
    found = book.lookup("s", batch=1)
    assert isinstance(found, Found) and found.slot.value == "SELECT 1"


def test_a_failed_creation_leaves_the_name_unusable_until_created_again() -> None:
    book: NameBook[str] = NameBook("portal")
    _slot, answered = book.create("", "held UPDATE", batch=0)
    answered(True)
    _slot, answered = book.create("", "SELECT $1", batch=1)
    answered(False)  # the server may still hold the old unnamed portal
    refused = book.lookup("", batch=2)
    assert isinstance(refused, Refuse) and refused.sqlstate == "34000"
    assert book.check_create("", batch=2, answered=1) is None
    _slot, answered = book.create("", "SELECT 2", batch=2)
    answered(True)
    found = book.lookup("", batch=3)
    assert isinstance(found, Found) and found.slot.value == "SELECT 2"


def test_a_named_duplicate_is_refused_and_a_closed_name_is_free_once_confirmed() -> None:
    book: NameBook[str] = NameBook("statement")
    _slot, answered = book.create("s", "UPDATE", batch=0)
    answered(True)
    refused = book.check_create("s", batch=1, answered=0)
    assert isinstance(refused, Refuse) and refused.sqlstate == "42P05"
    closed = book.close("s", batch=1)
    assert book.check_create("s", batch=1, answered=0) is None  # close then parse, one batch
    assert isinstance(book.check_create("s", batch=2, answered=0), Wait)  # close unanswered
    found = book.lookup("s", batch=2)
    assert isinstance(found, Found) and found.slot.value == "UPDATE"  # a skipped close keeps it
    closed(True)
    assert "s" not in book.slots
    closed_again = book.close("s", batch=3)
    closed_again(True)  # closing what does not exist is harmless
    assert isinstance(book.lookup("s", batch=3), Refuse)


def test_a_skipped_close_keeps_the_name() -> None:
    book: NameBook[str] = NameBook("statement")
    _slot, answered = book.create("s", "SELECT 1", batch=0)
    answered(True)
    book.close_all(batch=1)(False)
    assert isinstance(book.lookup("s", batch=2), Found)
    book.close_all(batch=2)(True)
    assert len(book) == 0


def test_portals_end_with_their_transaction_except_with_hold() -> None:
    book: NameBook[str] = NameBook("portal")
    for name, holdable in (("p", False), ("c", True)):
        _slot, answered = book.create(name, name, batch=0, holdable=holdable)
        answered(True)
    # a re-bind before the server said the transaction ended waits for its answers
    assert isinstance(book.check_create("p", batch=2, answered=0), WaitAnswers)
    book.transaction_ended(through_batch=1)
    assert set(book.slots) == {"c"}
    assert book.check_create("p", batch=2, answered=1) is None


def test_names_past_63_bytes_are_refused() -> None:
    book: NameBook[str] = NameBook("statement")
    long_name = "a" * 63 + "b"
    refused = book.check_create(long_name, batch=0, answered=-1)
    assert isinstance(refused, Refuse) and refused.sqlstate == "42622"
    assert isinstance(book.lookup(long_name, batch=0), Refuse)
    assert book.check_create("é" * 31, batch=0, answered=-1) is None  # 62 bytes
    assert isinstance(book.check_create("é" * 32, batch=0, answered=-1), Refuse)  # 64 bytes


def test_waiters_wake_when_the_answer_comes() -> None:
    book: NameBook[str] = NameBook("statement")
    slot, answered = book.create("s", "SELECT 1", batch=0)
    woken: list[bool] = []
    slot.waiters.append(lambda: woken.append(True))
    answered(True)
    assert woken == [True] and not slot.unsettled
