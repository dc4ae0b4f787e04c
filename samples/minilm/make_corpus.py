"""Extract real English sentences from the Python standard library's docstrings.

    python -m samples.minilm.make_corpus            # writes sentences.txt and training_sentences.txt
    python -m samples.minilm.make_corpus --check    # exit 1 if a checked-in file differs

The standard library exists on every machine with Python, so anyone can see where each
sentence came from. The checked-in sentences.txt was made with CPython 3.11.7; another Python
version has other docstrings and gives another file, which is why the file itself is checked in
and the recipe reads it rather than this script.

How: every .py file of the standard library (sorted, without tests, demos and IDLE) is parsed
with `ast` (nothing is imported or run); the docstrings of modules, classes and functions are cut
into paragraphs, paragraphs that look like code, doctests, tables or lists are dropped, and the
rest is cut into sentences. A sentence is kept when it reads as plain prose: it starts with a
capital letter and ends with a full stop, has 8 to 40 words, and holds no code (no `_`, `()`,
`=`, `>>>`, backquotes, brackets or paths). Duplicates are dropped, at most
MAX_PER_FILE sentences come from one file (so the set spans the library), and the first COUNT
by SHA-256 of the sentence are written, in that order: a spread-out selection that does not
depend on file order.

training_sentences.txt holds more sentences that only train (pruning, distillation, search): the
same extraction with at most TRAINING_MAX_PER_FILE sentences per file, less every sentence of
sentences.txt (so none of the held-out ones), in the same SHA-256 order. The recipe adds them to
the training side only; calibration and held-out samples come from sentences.txt as before.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import sysconfig
from pathlib import Path

COUNT = 640
MAX_PER_FILE = 6
TRAINING_MAX_PER_FILE = 60
OUTPUT = Path(__file__).resolve().parent / "sentences.txt"
TRAINING_OUTPUT = OUTPUT.with_name("training_sentences.txt")
SKIP_PARTS = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages", "dist-packages", "__pycache__",
              "ensurepip", "pydoc_data", "encodings"}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9][.!?])\s+(?=[A-Z])")
_CODE = re.compile(r"[_=<>\[\]{}`|\\/@#$%^~*]|\(\)|\.\w+\(|\w\.\w|--|\s-\w|::")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[,;:.]?$|^\d+[,.]?$|^\(?[A-Za-z]+\)?[,.]?$")


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return [d for d in (ast.get_docstring(n, clean=True) for n in nodes) if d]


def sentences(doc: str) -> list[str]:
    found = []
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        # Indented lines, doctests, bullets and field lists are code or tables, not prose.
        if any(line.startswith((" ", "\t", ">>>", "-", "*", ":", "+", "|", "..")) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        for sentence in _SENTENCE_END.split(text):
            if is_prose(sentence):
                found.append(sentence)
    return found


def is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not 8 <= len(words) <= 40 or not sentence[0].isupper() or not sentence.endswith(".") or sentence.endswith(".."):
        return False
    if _CODE.search(sentence) or "e.g" in sentence or "i.e" in sentence or "etc." in sentence[:-1]:
        return False
    if not sentence.isascii():
        return False
    return all(_WORD.match(w) for w in words)


def extract(stdlib: Path, max_per_file: int = MAX_PER_FILE) -> list[str]:
    """Every prose sentence (at most `max_per_file` per file), in SHA-256 order."""
    seen: set[str] = set()
    pool: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIP_PARTS & set(rel.parts) or rel.name.startswith("test"):
            continue
        taken = 0
        for doc in docstrings(path):
            for s in sentences(doc):
                key = s.lower()
                if key in seen or taken >= max_per_file:
                    continue
                seen.add(key)
                pool.append(s)
                taken += 1
    pool.sort(key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return pool


def corpora(stdlib: Path) -> dict[Path, list[str]]:
    """The two files: the calibration/held-out sentences, and the training-only ones (disjoint)."""
    sentences = extract(stdlib)[:COUNT]
    taken = {s.lower() for s in sentences}
    training = [s for s in extract(stdlib, TRAINING_MAX_PER_FILE) if s.lower() not in taken]
    return {OUTPUT: sentences, TRAINING_OUTPUT: training}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in files instead of writing them")
    args = parser.parse_args(argv)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = sys.version.split()[0]
    differs = 0
    for output, lines in corpora(stdlib).items():
        text = "\n".join(lines) + "\n"
        if args.check:
            same = output.is_file() and output.read_text(encoding="utf-8") == text
            print(f"{output}: {'identical to' if same else 'differs from'} the extraction from Python {version}")
            differs += not same
            continue
        output.write_text(text, encoding="utf-8")
        print(f"wrote {len(lines)} sentences from the Python {version} standard library ({stdlib}) to {output}")
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
