"""Held-out evaluation files for docs/reproduction.md, cut from plays that no arm trains on.

    python3 scripts/repro/heldout.py OUT_DIR PLAY.txt [PLAY.txt ...]

Writes, deterministically:
- OUT_DIR/passages.txt: LAMBADA-style plain text (one passage per line, ~40-70 words, ending in
  an alphabetic word of 3+ letters); `dlm eval --task lambada --data` reads it.
- OUT_DIR/infill.csv: ROCStories-style rows of five consecutive speech lines (prefix s1 s2, hole
  s3, suffix s4 s5); `dlm eval --task rocstories --data` reads it.
"""
import csv
import re
import sys
from pathlib import Path

out, plays = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
out.mkdir(parents=True, exist_ok=True)


def speech_lines(text):
    """Verse and prose lines of dialogue: no stage directions, speaker tags or headings."""
    for line in text.splitlines():
        line = line.strip()
        if len(line.split()) < 4 or line.startswith("[") or line.isupper():
            continue
        if re.match(r"^(ACT|SCENE|Enter|Exit|Exeunt)\b", line):
            continue
        yield line


passages, rows = [], []
for play in plays:
    lines = list(speech_lines(play.read_text(encoding="utf-8", errors="replace")))
    # Passages: greedy runs of whole lines until 40+ words, then a gap of 5 lines.
    i = 0
    while i < len(lines):
        words, j = [], i
        while j < len(lines) and len(words) < 40:
            words += lines[j].split()
            j += 1
        if len(words) > 70 or len(words) < 40:
            i = j + 1
            continue
        last = re.sub(r"[^A-Za-z']+$", "", words[-1])
        if len(last) >= 3 and last.isalpha():
            passages.append(" ".join(words[:-1] + [last]))
        i = j + 5
    # Infill rows: five consecutive lines, then skip ahead.
    for k in range(100, len(lines) - 5, 60):
        rows.append(lines[k : k + 5])

(out / "passages.txt").write_text("\n".join(passages) + "\n", encoding="utf-8")
with open(out / "infill.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3",
                "InputSentence4", "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2",
                "AnswerRightEnding"])
    for n, r in enumerate(rows):
        w.writerow([f"heldout-{n}", r[0], r[1], r[2], r[3], r[4], r[4], 1])
print(f"{len(passages)} passages, {len(rows)} infill rows in {out}")
