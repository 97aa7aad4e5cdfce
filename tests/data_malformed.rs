//! Malformed corpora (reference-semantics §1.6-1.7 input): every bad input is a clear error naming
//! the file (and line or element where one exists), or, for non-UTF-8 lines, a counted skip; never
//! a panic.

use std::path::{Path, PathBuf};

use dlm::data::corpus::{Corpus, CorpusOptions, Document};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn read_all(paths: &[PathBuf]) -> dlm::Result<Vec<Document>> {
    Corpus::open(paths, CorpusOptions::default())?
        .documents()
        .collect()
}

#[test]
fn bad_input_gives_clear_errors_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let err = |paths: &[PathBuf]| read_all(paths).unwrap_err().to_string();

    let missing = dir.path().join("nope.jsonl");
    assert!(err(std::slice::from_ref(&missing)).contains("nope.jsonl"));

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let e = err(std::slice::from_ref(&empty_dir));
    assert!(e.contains("empty corpus") && e.contains("empty"), "{e}");

    let blank = dir.path().join("blank.txt");
    write(&blank, b"\n  \n");
    let e = err(std::slice::from_ref(&blank));
    assert!(e.contains("empty corpus") && e.contains("blank.txt"), "{e}");

    let no_field = dir.path().join("nofield.jsonl");
    write(&no_field, b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
    let e = err(&[no_field]);
    assert!(
        e.contains("nofield.jsonl:2") && e.contains("missing field \"text\""),
        "{e}"
    );

    let malformed = dir.path().join("bad.jsonl");
    write(
        &malformed,
        b"{\"text\": \"ok\"}\n\n{\"text\": \"unterminated\n",
    );
    let e = err(&[malformed]);
    assert!(
        e.contains("bad.jsonl:3") && e.contains("malformed JSON"),
        "{e}"
    );

    let wrong_type = dir.path().join("num.jsonl");
    write(&wrong_type, b"{\"text\": 5}\n");
    assert!(err(&[wrong_type]).contains("not a string"));

    for (name, body) in [
        ("open.json", &b"[{\"text\": \"a\"}, {\"text\": \"b\"}"[..]),
        ("elem.json", &b"[{\"text\": \"a\"}, 7]"[..]),
        ("sep.json", &b"[{\"text\": \"a\"} {\"text\": \"b\"}]"[..]),
    ] {
        let p = dir.path().join(name);
        write(&p, body);
        let e = err(&[p]);
        assert!(e.contains(name) && e.contains("list element"), "{e}");
    }

    let corrupt = dir.path().join("corrupt.jsonl.gz");
    write(&corrupt, b"\x1f\x8b\x08\x00 definitely not deflate");
    assert!(err(&[corrupt]).contains("corrupt.jsonl.gz"));

    #[cfg(feature = "parquet")]
    {
        let fake = dir.path().join("fake.parquet");
        write(&fake, b"PAR1 but not really");
        assert!(err(&[fake]).contains("not a Parquet file"));
    }
}

#[test]
fn non_utf8_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.jsonl");
    write(
        &p,
        b"{\"text\": \"a\"}\n\xff\xfe{\"text\": \"b\"}\n{\"text\": \"c\"}\n",
    );
    let corpus = Corpus::open(&[p], CorpusOptions::default()).unwrap();
    let mut docs = corpus.documents();
    let got: Vec<Document> = docs.by_ref().collect::<dlm::Result<_>>().unwrap();
    assert_eq!(
        got,
        vec![Document::Text("a".into()), Document::Text("c".into())]
    );
    assert_eq!(docs.stats().skipped_non_utf8_lines, 1);
    assert_eq!(docs.stats().documents, 2);
}
