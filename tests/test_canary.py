"""Canaries: self-describing, authenticated by the run key, found anywhere in text."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from harness.canary import CANARY_RE, MAX_OWNER_BYTES, CanaryBook, decode_canary, mint_canary
from harness.types import TenantId, UserId, UserKey
from tests.builders import ALICE, BOB, EVE

KEY = b"k" * 32
LONG = UserKey(TenantId("t" * 30), UserId("u" * (MAX_OWNER_BYTES - 29)))


def test_each_user_has_its_own_canary_even_with_the_same_sub():
    book = CanaryBook(KEY)
    assert len({book.canary_for(u) for u in (ALICE, BOB, EVE)}) == 3


def test_canaries_depend_on_the_run_key():
    assert mint_canary(b"a" * 32, ALICE) != mint_canary(b"b" * 32, ALICE)


def test_any_process_with_the_run_key_attributes_any_canary_without_a_registry():
    # A worker of a distributed run meets the canary of a user another worker drives.
    canary = CanaryBook(KEY).canary_for(ALICE)
    other_worker = CanaryBook(KEY)
    assert other_worker.owner_of(canary) == ALICE
    assert list(other_worker.find(f'{{"content": "{canary} note 1"}}')) == [(canary, ALICE)]
    assert other_worker.minted() == []


def test_a_canary_of_another_run_is_not_attributed():
    canary = CanaryBook(b"a" * 32).canary_for(ALICE)
    assert CanaryBook(b"b" * 32).owner_of(canary) is None
    assert list(CanaryBook(b"b" * 32).find(canary)) == []


def test_a_forged_canary_naming_a_user_is_ignored():
    # The owner is readable in a canary, but without the run key no MAC matches it.
    canary = mint_canary(KEY, ALICE)
    blob = bytearray(base64.b32decode(canary[3:].upper()))
    blob[-1] ^= 1
    forged = "iso" + base64.b32encode(bytes(blob)).decode().lower()
    assert CANARY_RE.fullmatch(forged)
    assert decode_canary(KEY, forged) is None
    assert list(CanaryBook(KEY).find(f"x {forged} y")) == []


def test_a_canary_with_its_owner_changed_is_ignored():
    alice = mint_canary(KEY, ALICE)
    blob = bytearray(base64.b32decode(alice[3:].upper()))
    at = blob.index(b"alice")
    blob[at : at + 5] = b"alicf"
    assert list(CanaryBook(KEY).find("iso" + base64.b32encode(bytes(blob)).decode().lower())) == []


def test_garbled_and_truncated_canaries_are_ignored():
    canary = mint_canary(KEY, ALICE)
    book = CanaryBook(KEY)
    for garbled in (canary[:-1], canary[:20], canary[:5] + "a" + canary[6:], "iso" + "a" * 40):
        assert list(book.find(f'"{garbled}"')) == [], garbled


def test_find_reports_each_authentic_canary_once():
    book = CanaryBook(KEY)
    a, b = book.canary_for(ALICE), book.canary_for(BOB)
    text = f'{{"x": "{a}", "y": ["{b}-m1", "{a}"], "z": "iso{"a" * 30}"}}'
    assert sorted(book.find(text)) == sorted([(a, ALICE), (b, BOB)])


def test_a_canary_glued_to_letters_or_to_another_canary_is_found():
    book = CanaryBook(KEY)
    a, b = mint_canary(KEY, ALICE), mint_canary(KEY, BOB)
    assert sorted(book.find(f"isoiso{a}{b}abc")) == sorted([(a, ALICE), (b, BOB)])


def test_an_owner_too_long_to_carry_is_attributed_where_registered():
    canary = mint_canary(KEY, LONG)
    assert len(canary) <= 3 + 96
    assert decode_canary(KEY, canary) == (canary, None)
    assert CanaryBook(KEY).owner_of(canary) is None
    registered = CanaryBook(KEY)
    registered.register([LONG])
    assert list(registered.find(f"{canary}-m1")) == [(canary, LONG)]


def test_canaries_fit_in_a_thread_id_and_survive_json_escaping():
    longest = UserKey(TenantId("t" * 24), UserId("u" * (MAX_OWNER_BYTES - 24)))
    for owner in (ALICE, EVE, longest, LONG):
        canary = mint_canary(KEY, owner)
        assert CANARY_RE.fullmatch(canary)
        assert canary == canary.encode("unicode_escape").decode()
        assert len(f"private-{canary}") <= 128


@given(st.text(), st.text())
def test_a_planted_canary_is_always_found(prefix, suffix):
    book = CanaryBook(KEY)
    canary = mint_canary(KEY, ALICE)
    assert (canary, ALICE) in list(book.find(prefix + canary + suffix))


@given(
    st.text(min_size=0, max_size=20).filter(lambda t: "/" not in t),
    st.text(min_size=0, max_size=20),
)
def test_every_owner_round_trips(tenant, user):
    owner = UserKey(TenantId(tenant), UserId(user))
    canary = mint_canary(KEY, owner)
    decoded = decode_canary(KEY, canary + "zz")
    expected = owner if len(tenant.encode()) + len(user.encode()) <= MAX_OWNER_BYTES else None
    assert decoded == (canary, expected)


# -- a service may change a canary's case or cut it short (a preview) -------------------------


def test_a_canary_whose_case_was_changed_is_found_and_named_in_lower_case():
    book = CanaryBook(KEY)
    canary = mint_canary(KEY, ALICE)
    for changed in (canary.upper(), canary.title(), canary.capitalize(), canary.swapcase()):
        assert list(book.find(f"NOTE: {changed} SAID HI")) == [(canary, ALICE)], changed


def test_a_forged_canary_stays_ignored_in_any_case():
    canary = mint_canary(KEY, ALICE)
    forged = canary[:-1] + ("a" if canary[-1] != "a" else "b")
    assert list(CanaryBook(KEY).find(forged.upper())) == []


def test_a_canary_cut_after_its_owner_is_attributed_by_minting_it_again():
    # Another worker's user: this book never saw the canary whole, the cut names its owner.
    canary = mint_canary(KEY, ALICE)
    cut = canary[:30]  # "iso", acme/alice in 18 characters, then 9 of the MAC's 22
    assert [tuple(m) for m in CanaryBook(KEY).marks(f"preview: {cut}…")] == [(cut, (ALICE,), False)]
    assert [tuple(m) for m in CanaryBook(KEY).marks(f"PREVIEW: {cut.upper()}")] == [
        (cut.upper(), (ALICE,), False)
    ]


def test_a_cut_that_is_not_the_beginning_of_the_owners_canary_is_ignored():
    canary = mint_canary(KEY, ALICE)
    cut = canary[:-4]
    wrong = cut[:-1] + ("a" if cut[-1] != "a" else "b")
    assert list(CanaryBook(KEY).marks(wrong)) == []
    assert list(CanaryBook(b"x" * 32).marks(cut)) == []  # another run's


def test_a_cut_too_short_to_name_its_owner_names_every_known_user_it_could_be():
    book = CanaryBook(KEY)
    u1, u2 = (UserKey(TenantId("acme-staging"), UserId(f"user-000{i}")) for i in (1, 2))
    c1, c2 = book.canary_for(u1), book.canary_for(u2)
    common = next(i for i, (a, b) in enumerate(zip(c1, c2, strict=False)) if a != b)
    assert common >= 27  # the tenant and most of the user are in clear, in both
    assert [m.owners for m in book.marks(c1[:common])] == [(u1, u2)]
    assert [m.owners for m in book.marks(c1[: common + 1])] == [(u1,)]
    assert list(CanaryBook(KEY).marks(c1[:common])) == []  # users this process does not know


def test_marks_report_a_whole_canary_once_and_not_again_as_cut():
    book = CanaryBook(KEY)
    a, b = mint_canary(KEY, ALICE), mint_canary(KEY, BOB)
    text = f"{a} {a[:40]} {b}-m1 {a}"
    assert sorted((m.found, m.whole) for m in book.marks(text)) == sorted([(a, True), (b, True)])
