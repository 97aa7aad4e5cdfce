#!/usr/bin/env python3
"""Checks `dlm generate --json` outputs for text a person would call text (issue 16's bar).

usage: check_outputs.py OUTPUTS.jsonl TRAIN_TEXT_DIR [--min-words 25] [--min-known 0.9]

Per canvas: the whitespace-separated words of the generated text (chunks with at least one
letter: a lone "," or "." is not a word), scaled to 64 generated tokens; the share of them that
occur in the training text (compared without surrounding punctuation and case); and whether the
canvas is blank or one repeated token. Prints a row per canvas and the
totals; exits 1 when any canvas misses the bar.
"""
import argparse
import json
import pathlib
import string
import sys

PUNCT = string.punctuation + "\u2019\u2018\u201c\u201d"


def norm(word):
    return word.strip(PUNCT).lower()


def words_of(text):
    return [w for w in text.split() if any(c.isalpha() for c in w)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outputs")
    ap.add_argument("train_dir")
    ap.add_argument("--min-words", type=float, default=25)
    ap.add_argument("--min-known", type=float, default=0.9)
    a = ap.parse_args()
    known = set()
    for f in sorted(pathlib.Path(a.train_dir).iterdir()):
        known.update(norm(w) for w in words_of(f.read_text(encoding="utf-8")))
    rows = [json.loads(l) for l in open(a.outputs, encoding="utf-8") if l.strip()]
    failed = 0
    total_words = total_known = 0
    print(f"{'#':>2} {'words/64':>8} {'known':>6}  ok  text", flush=True)
    for r in rows:
        words = words_of(r["text"])
        ids = r["ids"]
        per64 = len(words) * 64 / max(len(ids), 1)
        k = sum(norm(w) in known for w in words)
        share = k / len(words) if words else 0.0
        degenerate = not words or len(set(ids)) <= 1
        ok = per64 >= a.min_words and share >= a.min_known and not degenerate
        failed += not ok
        total_words += len(words)
        total_known += k
        shown = r["text"].replace("\n", " / ")[:90]
        print(f"{r['index']:>2} {per64:8.1f} {share:6.1%}  {'y' if ok else 'N'}   {shown}")
    n = len(rows)
    print(
        f"{n - failed}/{n} canvases pass (>= {a.min_words:g} words per 64 tokens, >= "
        f"{a.min_known:.0%} known words, not blank or one token); {total_words} words, "
        f"{total_known / max(total_words, 1):.1%} known"
    )
    sys.exit(1 if failed else 0)


main()
