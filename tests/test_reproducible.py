"""The numerical environment (memorylib/reproducible.py): what a fingerprint certifies and what
same_numerics compares. The test session runs with the environment applied (conftest.py)."""

import torch

from memorylib import reproducible


def test_the_session_runs_in_the_reference_environment():
    assert reproducible.is_reference()
    assert torch.get_num_threads() == reproducible.THREADS == 1
    assert not reproducible.is_reference(dict(reproducible.FOREIGN_ENV))
    assert not reproducible.is_reference({})
    env = {}
    assert reproducible.apply(env) == reproducible.NUMERIC_ENV and reproducible.is_reference(env)


def test_fingerprint_is_stable_and_leaves_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reproducible.fingerprint.cache_clear()
    first = reproducible.fingerprint()
    assert torch.equal(torch.rand(3), expected)          # the global random stream is untouched
    reproducible.fingerprint.cache_clear()
    assert reproducible.fingerprint() == first and len(first) == 16
    int(first, 16)


def test_same_numerics_needs_the_same_fingerprint():
    here = reproducible.fingerprint()
    assert reproducible.same_numerics({"fingerprint": here})
    assert not reproducible.same_numerics({"fingerprint": "0" * 16})
    assert not reproducible.same_numerics({})               # a sweep that recorded none


def test_committed_surprise_sweeps_record_their_fingerprint():
    import json
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    for name in ("ch04_surprise.json", "ch04_surprise_long.json"):
        record = json.loads((root / "book" / "results" / name).read_text())
        assert len(record["fingerprint"]) == 16 and isinstance(record["numeric_env"], dict)


def test_close_is_exact_at_the_stated_precision_and_tolerant_elsewhere():
    import math

    import pytest

    from memorylib.book import close

    assert close(0.98612, 0.9861, 0.01, exact=True) and not close(0.98616, 0.9861, 0.01, exact=True)
    assert close(0.98616, 0.9861, 0.01, exact=False) and not close(0.9662, 0.9861, 0.01, exact=False)
    assert close(1042, 1042, 5, exact=True) and not close(1043, 1042, 5, exact=True)
    assert close(1043, 1042, 5, exact=False)
    assert close((0.5337, 0.5952), (0.5337, 0.5952), 0.02, exact=True)
    assert not close((0.5337, 0.6252), (0.5337, 0.5952), 0.02, exact=False)
    assert not close(math.nan, 0.5, 1.0, exact=False) and not close(math.inf, 0.5, math.inf, exact=False)
    with pytest.raises(ValueError, match="2 stated numbers"):
        close([0.1], [0.1, 0.2], 0.1, exact=False)
    with pytest.raises(ValueError, match="tolerance must be"):
        close(0.1, 0.1, -1, exact=False)


def test_below_prints_the_bound_not_the_noise():
    import math

    import pytest

    from memorylib.book import below

    assert below(1.1e-16, 1e-12) == below(1.6e-16, 1e-12) == "below 1e-12"
    assert below(3e-12, 1e-12) == "3.0e-12 (not below 1e-12)"
    assert below(math.nan, 1e-12) == "nan (not below 1e-12)"
    with pytest.raises(ValueError, match="limit must be"):
        below(0.0, 0)


def test_nbval_skips_only_tagged_cells_on_a_foreign_fingerprint():
    from conftest import ARITHMETIC_TAG, compared

    assert compared("abc", "abc", [ARITHMETIC_TAG])                  # the machine that executed it: every cell
    assert compared("abc", "xyz", [])                                # elsewhere: untagged cells still compared
    assert compared("abc", "xyz", ["hide-input"])
    assert not compared("abc", "xyz", [ARITHMETIC_TAG])              # ... tagged ones not
    assert not compared(None, "xyz", [ARITHMETIC_TAG])               # a chapter never executed with a fingerprint
    assert compared("abc", "xyz", [ARITHMETIC_TAG], compare_all=True)


def test_fetch_book_stays_in_a_chapters_folder_and_needs_a_git_install(tmp_path, monkeypatch):
    import pathlib

    import pytest

    from memorylib import book

    chapters = pathlib.Path(__file__).resolve().parents[1] / "chapters"
    monkeypatch.chdir(chapters)
    assert book.fetch_book(tmp_path / "elsewhere") == chapters and not (tmp_path / "elsewhere").exists()
    monkeypatch.chdir(tmp_path)          # a folder with the notebook alone, and memorylib installed with -e
    with pytest.raises(RuntimeError, match="not installed from a git repository"):
        book.fetch_book(tmp_path / "memory-book")
    assert not (tmp_path / "memory-book").exists()
    with pytest.raises(ValueError, match="threads must be an int >= 1 or None, got 0"):
        book.setup(threads=0)


def test_headless_kernels_skip_the_first_widget_drawing(monkeypatch):
    from memorylib import book

    monkeypatch.delenv("MEMORYLIB_BOOK", raising=False)
    monkeypatch.delenv("MEMORYLIB_HEADLESS", raising=False)
    assert not book.headless()                       # a reader's kernel: widgets draw at once
    monkeypatch.setenv("MEMORYLIB_HEADLESS", "1")
    assert book.headless() and not book.book_mode()  # the reader's path in CI: no book renderer
    monkeypatch.setenv("MEMORYLIB_HEADLESS", "0")
    monkeypatch.setenv("MEMORYLIB_BOOK", "1")
    assert book.headless()


def test_setup_shows_one_short_line_and_is_still_a_dict():
    from memorylib import book

    settings = book.Settings(seed=0, threads=1, torch="2.13.0", book_mode=True, colab=False,
                             renderer="plotly_mimetype+memorylib_book")
    assert repr(settings) == "memorylib ready: seed 0, 1 thread, torch 2.13.0, figures for the book"
    assert "\n" not in repr(settings) and len(repr(settings)) <= 88
    assert settings["threads"] == 1 and isinstance(settings, dict)
    two = book.Settings(settings, threads=2, book_mode=False, colab=True)
    assert repr(two) == "memorylib ready: seed 0, 2 threads, torch 2.13.0, Colab"
