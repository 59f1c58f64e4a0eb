"""Text corpora for evaluation and fine-tuning: one loader for every `--data` (and `--haystack`) value.

  pydoc                      the prose of Python's own documentation (`pydoc_data.topics`, ~465K chars)
  stdlib                     the standard library's top-level `*.py` sources (code: another distribution)
  FILE / DIR [,FILE ...]     a text file (one document), a `.jsonl` file (one document per line, field
                             `text_field`), or a directory of `*.txt` / `*.md` / `*.rst` / `*.py` / `*.jsonl`
                             (README*, LICENSE* and CHANGES* files in a directory describe it: skipped)
  hf:NAME[:CONFIG][:SPLIT]   a Hugging Face dataset through `datasets`
  pydoc,FILE [,FILE ...]     the pydoc prose next to files
Both embedded corpora ship with every CPython, so nothing is downloaded by default. Documents come back in
a fixed order; callers shuffle them with their own seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from longctx.errors import UsageError, require

DEFAULT_DATA = "pydoc"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".jsonl")
NOT_DATA = ("README", "LICENSE", "CHANGES")  # a folder's own description, not part of its corpus


def data_name(spec: str | None) -> str:
    """The short name results record: 'pydoc', 'stdlib', the hf: spec, or a file's name (each file's, in a
    comma-separated list: two lists ending in the same file are different data)."""
    if not spec or spec in (DEFAULT_DATA, "stdlib") or spec.startswith("hf:"):
        return spec or DEFAULT_DATA
    return ",".join(Path(part.strip()).name for part in spec.split(",") if part.strip())


def pydoc_documents() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(f"pydoc:{key}", topics[key]) for key in sorted(topics)]


def stdlib_documents() -> list[tuple[str, str]]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    return [(f"stdlib:{path.name}", path.read_text(encoding="utf-8", errors="replace"))
            for path in sorted(root.glob("*.py")) if path.is_file()]


def hf_documents(spec: str, text_field: str = "text", default_split: str = "train") -> list[tuple[str, str]]:
    """`hf:NAME[:CONFIG][:SPLIT]` through `datasets` (honours HF_HUB_OFFLINE like the rest of the Hub)."""
    parts = spec[3:].split(":")
    require(bool(parts[0]) and len(parts) <= 3, f"bad dataset spec {spec!r}: write hf:NAME[:CONFIG][:SPLIT]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else default_split
    try:
        import datasets
    except ImportError:
        raise UsageError("--data hf:... needs the datasets package: pip install 'longctx[eval]'") from None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, …)
        raise UsageError(
            f"could not load dataset {name!r} (config {config}, split {split}): {type(exc).__name__}"
        ) from None
    require(text_field in rows.column_names,
            f"dataset {name!r} has no field {text_field!r} (fields: {', '.join(rows.column_names)})")
    return [(f"{spec}#{index}", text) for index, text in enumerate(rows[text_field]) if isinstance(text, str)]


def read_utf8(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 text (a binary file given by mistake) are refused
    rather than scored as replacement characters."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"data {path} is not UTF-8 text (invalid byte at offset {exc.start}): give a text file"
        ) from None
    require("\x00" not in text, f"data {path} holds NUL bytes, so it is binary, not text: give a text file")
    return text


def file_documents(path: Path, text_field: str = "text") -> list[tuple[str, str]]:
    """(name, text): a .jsonl file gives one document per line (`file.jsonl:LINE`); any other file is one."""
    text = read_utf8(path)
    if path.suffix != ".jsonl":
        return [(path.name, text)]
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}:{number} is not valid JSON: a .jsonl file needs one object per line") from None
        require(isinstance(row, dict) and isinstance(row.get(text_field), str),
                f"{path}:{number} has no string field {text_field!r}")
        docs.append((f"{path.name}:{number}", row[text_field]))
    return docs


def load_named_documents(spec: str | None = None, text_field: str = "text",
                         default_split: str = "train") -> list[tuple[str, str]]:
    """(name, text) of the non-empty documents named by a data spec (see the module docstring), in a fixed
    order. Names say where each document came from (`american_adventures.txt`, `pydoc:assert`, …)."""
    spec = spec or DEFAULT_DATA
    if spec == DEFAULT_DATA:
        docs = pydoc_documents()
    elif spec == "stdlib":
        docs = stdlib_documents()
    elif spec.startswith("hf:"):
        docs = hf_documents(spec, text_field, default_split)
    else:
        docs = []
        for item in (part.strip() for part in spec.split(",") if part.strip()):
            if item == DEFAULT_DATA:  # pydoc prose next to files: "pydoc,book.txt"
                docs.extend(pydoc_documents())
                continue
            path = Path(item).expanduser()
            require(path.exists(), f"data {item} does not exist: give pydoc, stdlib, hf:NAME or text/JSONL files")
            from longctx.checkpoint_files import check_regular_files, require_regular_file

            require_regular_file(path, "data")  # a FIFO or a device would block or never end
            if path.is_dir():
                check_regular_files(path, " in the data folder")
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                           and not p.name.upper().startswith(NOT_DATA)) if path.is_dir() else [path]
            require(bool(files), f"data {item} holds no {'/'.join(TEXT_SUFFIXES)} files")
            for file in files:
                docs.extend(file_documents(file, text_field))
    docs = [(name, text) for name, text in docs if text.strip()]
    require(bool(docs), f"data {spec!r} holds no text")
    return docs


def load_documents(spec: str | None = None, text_field: str = "text", default_split: str = "train") -> list[str]:
    """The texts of `load_named_documents`."""
    return [text for _, text in load_named_documents(spec, text_field, default_split)]
