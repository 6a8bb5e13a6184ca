"""System V style permission checks (capabilities/policy.py): the first matching
class counts, root may do all, and a denial says what is missing."""

from __future__ import annotations

import itertools

import pytest

from capabilities.policy import READ, WRITE, Perm, allowed, caller_class, check_mode, denial

OWNER, GROUP = 1000, 100


@pytest.mark.parametrize("mode", [0o000, 0o004, 0o040, 0o400, 0o604, 0o460, 0o777, 0o222])
def test_allowed_reads_the_bits_of_the_callers_class_alone(mode):
    perm = Perm(OWNER, GROUP, mode)
    shifts = {"owner": 6, "group": 3, "other": 0}
    for uid, gid, want in itertools.product((OWNER, 1001), (GROUP, 101), (READ, WRITE)):
        bits = (mode >> shifts[caller_class(perm, uid, gid)]) & 0o7
        assert allowed(perm, uid, gid, want) == (bits & want == want), (uid, gid, want)


def test_an_owner_without_the_owner_bit_is_denied_even_if_others_may():
    perm = Perm(OWNER, GROUP, 0o044)
    assert not allowed(perm, OWNER, GROUP, READ)
    assert allowed(perm, 1001, GROUP, READ)  # group
    assert allowed(perm, 1001, 101, READ)  # other


def test_root_may_do_all():
    assert allowed(Perm(OWNER, GROUP, 0o000), 0, 0, READ | WRITE)


def test_a_denial_names_the_permission_the_class_and_the_mode():
    perm = Perm(OWNER, GROUP, 0o600)
    why = denial(perm, 1001, 101, READ, "looking up 'x'")
    assert why is not None
    assert "looking up 'x' needs read permission" in why
    assert "0o600" in why
    assert "class other" in why
    assert denial(perm, OWNER, GROUP, WRITE, "replacing 'x'") is None


@pytest.mark.parametrize("bad", [-1, 0o1000, True, 1.0, "600"])
def test_check_mode_refuses_what_is_not_nine_bits(bad):
    with pytest.raises(ValueError, match="mode"):
        check_mode(bad)
