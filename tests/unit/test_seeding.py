"""Seeds derived for each generation and epoch."""

from labelrefinery.seeding import derive_seed


def test_derive_seed_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, g, e) for g in range(5) for e in range(5)}) == 25
