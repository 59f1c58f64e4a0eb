"""Perplexity windows come from single documents; `--data` takes a folder of .txt files."""

from __future__ import annotations

import pytest

from longctx.corpus import data_name, load_named_documents
from longctx.errors import UsageError
from longctx.evals.tasks.data import DocumentTokens


class WordTokenizer:
    """One token per whitespace-separated word: lengths are easy to reason about."""

    def encode(self, text, add_special_tokens=False):
        return [hash(word) % 1000 for word in text.split()]


def _folder(tmp_path, sizes: dict[str, int]):
    for name, words in sizes.items():
        (tmp_path / name).write_text(" ".join(f"{name[0]}{i}" for i in range(words)))
    return tmp_path


def test_a_folder_of_txt_files_is_one_document_per_file_and_skips_its_readme(tmp_path):
    folder = _folder(tmp_path, {"a.txt": 50, "b.txt": 300, "README.md": 400})
    docs = load_named_documents(str(folder))
    assert [name for name, _ in docs] == ["a.txt", "b.txt"]


def test_results_name_data_by_every_file_of_a_list_and_by_a_folder():
    # a list of two books is recorded as both: the last file's name alone would pass it off as that one book
    assert data_name("../books/a.txt, ../books/b.txt") == "a.txt,b.txt"
    assert data_name("../shared/data/books") == "books"
    assert data_name("../books/b.txt") == "b.txt"
    assert data_name(None) == "pydoc" and data_name("hf:wikitext:raw") == "hf:wikitext:raw"


def test_every_window_lies_inside_one_document(tmp_path):
    folder = _folder(tmp_path, {"a.txt": 50, "b.txt": 300, "c.txt": 120, "d.txt": 90})
    named = load_named_documents(str(folder))
    documents = DocumentTokens(WordTokenizer(), named)
    windows = documents.windows(100, 4, seed=3)
    assert len(windows) == 4
    assert {w.doc for w in windows} == {"b.txt", "c.txt"}  # a.txt and d.txt are shorter than a window
    texts = dict(named)
    for window in windows:
        ids = WordTokenizer().encode(texts[window.doc])
        assert len(window.tokens) == 100
        assert window.tokens == ids[window.start:window.start + 100]
    b_windows = sorted(w.start for w in windows if w.doc == "b.txt")
    assert all(later - earlier >= 100 for earlier, later in zip(b_windows, b_windows[1:], strict=False))


def test_windows_spread_over_documents_and_depend_only_on_the_seed(tmp_path):
    folder = _folder(tmp_path, {f"{c}.txt": 500 for c in "abcdef"})
    documents = DocumentTokens(WordTokenizer(), load_named_documents(str(folder)))
    first = documents.windows(200, 3, seed=1)
    assert len({w.doc for w in first}) == 3  # one window per document while documents last
    assert [(w.doc, w.start) for w in first] == [(w.doc, w.start) for w in documents.windows(200, 3, seed=1)]
    assert [(w.doc, w.start) for w in first] != [(w.doc, w.start) for w in documents.windows(200, 3, seed=2)]
    # the same documents at every length for one seed: a longer length compares the same texts
    assert [w.doc for w in documents.windows(400, 3, seed=1)] == [w.doc for w in first]


def test_ppl_refuses_data_without_a_document_that_long(tmp_path):
    from longctx.evals.tasks import perplexity

    folder = _folder(tmp_path, {"a.txt": 50, "b.txt": 80})
    cfg = perplexity.Config(lengths=[64, 200], data=str(folder), docs=2)
    with pytest.raises(UsageError, match="no document of data .* holds 200 tokens"):
        perplexity.plan_windows(WordTokenizer(), cfg, cfg.lengths)


@pytest.mark.parametrize(
    "name", ["extension-ppl.yaml", "extension-ppl-8w.yaml", "extension-ppl-heldout.yaml", "extension-passkey.yaml",
             "extension-niah-books.yaml"]
)
def test_extension_suites_are_valid_and_go_past_the_trained_8k(name):
    from pathlib import Path

    from longctx.evals.suite import load_suite, make_config

    tasks, _ = load_suite(Path(__file__).resolve().parents[1] / "eval" / "suites" / name)
    configs = {task: make_config(task, settings) for task, settings in tasks.items()}
    assert max(n for cfg in configs.values() for n in cfg.lengths) == 16384
    if "ppl" in configs:
        assert configs["ppl"].data.startswith("../shared/data/books") and configs["ppl"].docs >= 2
    if "passkey" in configs:
        assert configs["passkey"].trials >= 5 and len(configs["passkey"].depths) >= 3
    if "niah" in configs:  # a realistic haystack, >= 10 trials per length, the in-window control on
        niah = configs["niah"]
        assert niah.haystack.endswith("books") and niah.trials * len(niah.depths) >= 10 and niah.control


def test_the_held_out_suite_reads_only_books_the_fine_tunes_left_out():
    from pathlib import Path

    import yaml

    from longctx.evals.suite import load_suite, make_config

    root = Path(__file__).resolve().parents[1]
    tasks, _ = load_suite(root / "eval" / "suites" / "extension-ppl-heldout.yaml")
    held_out = {Path(part).name for part in make_config("ppl", tasks["ppl"]).data.split(",")}
    for recipe in ("smollm2-135m-yarn2-books2k.yaml", "smollm2-135m-yarn2-books2k-pose16k.yaml"):
        trained = yaml.safe_load((root / "recipes" / "configs" / recipe).read_text())["data"]
        assert held_out.isdisjoint(Path(part).name for part in trained.split(",")), recipe
    assert len(held_out) == 2 and make_config("ppl", tasks["ppl"]).docs >= 8


def test_every_length_of_a_sweep_reads_the_same_documents_where_it_can(tmp_path):
    folder = _folder(tmp_path, {"short1.txt": 150, "short2.txt": 150, "short3.txt": 150, "long.txt": 1000})
    documents = DocumentTokens(WordTokenizer(), load_named_documents(str(folder)))
    for seed in range(5):
        assert [w.doc for w in documents.windows(100, 1, seed=seed, prefer_length=800)] == ["long.txt"]
    # more windows than long documents: the long one first, then the others that hold the length
    docs = [w.doc for w in documents.windows(100, 3, seed=0, prefer_length=800)]
    assert docs[0] == "long.txt" and len(set(docs)) == 3
