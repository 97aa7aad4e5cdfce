//! The data pipeline end to end: corpus formats, packing through a trained tokenizer,
//! SFT from JSONL, and exact loader resume over a streamed corpus (reference-semantics §1.6-1.7).

use std::io::Write;
use std::path::{Path, PathBuf};

use dlm::data::corpus::{Corpus, CorpusOptions, Document, Fields};
use dlm::data::loader::{Batch, Loader, LoaderConfig, LoaderState};
use dlm::data::packing::{pack_documents, DocSplit, PackedSource, Part, ValSplit};
use dlm::data::sft::{sft_example, SftFormat, SftSource};
use dlm::data::tokenizer::Tokenizer;
use dlm::data::tokenizer_train::train_bpe;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn read_all(paths: &[PathBuf], options: CorpusOptions) -> dlm::Result<Vec<Document>> {
    Corpus::open(paths, options)?.documents().collect()
}

fn texts(docs: &[Document]) -> Vec<&str> {
    docs.iter()
        .map(|d| match d {
            Document::Text(t) => t.as_str(),
            Document::Pair { .. } => panic!("pair"),
        })
        .collect()
}

/// One batch of `batch_size` at a time, in corpus order.
fn in_order(batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        shuffle_buffer: 1,
        seed: 0,
    }
}

fn line_docs() -> CorpusOptions {
    CorpusOptions {
        line_docs: true,
        ..Default::default()
    }
}

#[test]
fn every_format_and_compression_reads_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = b"{\"text\": \"alpha\", \"id\": 1}\n\n{\"text\": \"beta\"}\n";
    let list = b" [ {\"text\": \"alpha\"} ,\n{\"text\": \"beta\", \"n\": [1, 2]}\n]\n";
    for (name, bytes) in [
        ("a.jsonl", jsonl.to_vec()),
        ("b.json", list.to_vec()),
        ("c.json", jsonl.to_vec()), // JSONL under a .json name
        ("d.jsonl.gz", gzip(jsonl)),
        ("e.json.zst", zstd::encode_all(&list[..], 3).unwrap()),
    ] {
        let p = dir.path().join(name);
        write(&p, &bytes);
        let docs = read_all(&[p], CorpusOptions::default()).unwrap();
        assert_eq!(texts(&docs), vec!["alpha", "beta"], "{name}");
    }
    let txt = b"line one\n\nline two\r\n";
    let p = dir.path().join("t.txt.gz");
    write(&p, &gzip(txt));
    let whole = read_all(std::slice::from_ref(&p), CorpusOptions::default()).unwrap();
    assert_eq!(texts(&whole), vec!["line one\n\nline two"]);
    let lines = read_all(&[p], line_docs()).unwrap();
    assert_eq!(texts(&lines), vec!["line one", "line two"]);
}

#[test]
fn directories_are_walked_recursively_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("b/2.txt"), b"two");
    write(&dir.path().join("b/1.txt"), b"one");
    write(&dir.path().join("a.txt"), b"zero");
    write(&dir.path().join(".hidden.txt"), b"hidden");
    write(&dir.path().join("notes.bin"), b"\x00\x01");
    let corpus = Corpus::open(&[dir.path().to_owned()], CorpusOptions::default()).unwrap();
    assert_eq!(corpus.files().len(), 3);
    let docs: Vec<Document> = corpus.documents().collect::<dlm::Result<_>>().unwrap();
    assert_eq!(texts(&docs), vec!["zero", "one", "two"]);
}

#[test]
fn fixtures_read_as_c4_list_and_wiki_lines() {
    let c4 = read_all(
        &[fixtures().join("c4_small.json")],
        CorpusOptions::default(),
    )
    .unwrap();
    assert_eq!(c4.len(), 6);
    let wiki = read_all(&[fixtures().join("wiki_small.txt")], line_docs()).unwrap();
    assert_eq!(wiki.len(), 4);
    assert!(texts(&wiki)[0].starts_with("Anarchism"));
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_text_column_is_read_and_other_columns_ignored() {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let schema = "message schema { REQUIRED INT64 id; REQUIRED BYTE_ARRAY text (UTF8); }";
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fineweb.parquet");
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for group in [["first", "second"], ["third", "fourth"]] {
        let mut rg = writer.next_row_group().unwrap();
        let mut id = rg.next_column().unwrap().unwrap();
        id.typed::<Int64Type>()
            .write_batch(&[1, 2], None, None)
            .unwrap();
        id.close().unwrap();
        let mut text = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = group.iter().map(|s| ByteArray::from(*s)).collect();
        text.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        text.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();

    let docs = read_all(std::slice::from_ref(&path), CorpusOptions::default()).unwrap();
    assert_eq!(texts(&docs), vec!["first", "second", "third", "fourth"]);
    let missing = CorpusOptions {
        fields: Fields::Text { key: "body".into() },
        line_docs: false,
    };
    let err = read_all(&[path], missing).unwrap_err().to_string();
    assert!(
        err.contains("missing column \"body\"") && err.contains("text"),
        "{err}"
    );
}

fn trained_tokenizer() -> Tokenizer {
    let corpus = Corpus::open(
        &[fixtures().join("c4_small.json")],
        CorpusOptions::default(),
    )
    .unwrap();
    let (tok, stats) = train_bpe(&corpus, 400, &["<|endoftext|>".into()]).unwrap();
    assert_eq!(stats.documents, 6);
    tok
}

#[test]
fn packed_corpus_equals_manual_packing_and_resumes_exactly() {
    let tok = trained_tokenizer();
    let eos = tok.token_to_id("<|endoftext|>").unwrap();
    let paths = [
        fixtures().join("c4_small.json"),
        fixtures().join("wiki_small.txt"),
    ];
    let corpus = Corpus::open(&paths, CorpusOptions::default()).unwrap();
    let no_split = DocSplit {
        seed: 0,
        val: ValSplit::None,
    };
    let source =
        || PackedSource::new(corpus.clone(), tok.clone(), 33, eos, no_split, Part::Train).unwrap();

    // Blocks from the streamed source equal packing the tokenised documents by hand.
    let docs: Vec<Vec<u32>> = corpus
        .documents()
        .map(|d| match d.unwrap() {
            Document::Text(t) => tok.encode(&t).unwrap(),
            Document::Pair { .. } => unreachable!(),
        })
        .collect();
    let expected_blocks = pack_documents(&docs, 33, eos).unwrap();
    let mut l = Loader::new(source(), in_order(1)).unwrap();
    for block in &expected_blocks {
        let b = l.next_batch().unwrap();
        assert_eq!(&b.ids[0], block);
        assert_eq!(b.src_mask[0], vec![0; 33]);
    }
    assert_eq!(l.next_batch().unwrap().epoch, 1);

    // N steps straight == N/2 steps, save, restore into a fresh source, N/2 steps.
    let config = LoaderConfig {
        batch_size: 3,
        shuffle_buffer: 5,
        seed: 9,
    };
    let n = 2 * expected_blocks.len(); // several epochs
    let mut straight = Loader::new(source(), config.clone()).unwrap();
    let want: Vec<Batch> = (0..n).map(|_| straight.next_batch().unwrap()).collect();
    let mut first = Loader::new(source(), config).unwrap();
    let mut got: Vec<Batch> = (0..n / 2).map(|_| first.next_batch().unwrap()).collect();
    let saved = serde_json::to_vec(first.state()).unwrap();
    let state: LoaderState = serde_json::from_slice(&saved).unwrap();
    let mut resumed = Loader::from_state(source(), state).unwrap();
    got.extend((n / 2..n).map(|_| resumed.next_batch().unwrap()));
    assert_eq!(got, want);
}

#[test]
fn validation_split_is_disjoint_by_document() {
    let tok = trained_tokenizer();
    let eos = tok.token_to_id("<|endoftext|>").unwrap();
    let corpus = Corpus::open(&[fixtures().join("wiki_small.txt")], line_docs()).unwrap();
    let split = DocSplit {
        seed: 1,
        val: ValSplit::Count(1),
    };
    let block = |part| {
        let mut s = PackedSource::new(corpus.clone(), tok.clone(), 8, eos, split, part).unwrap();
        let mut l = Loader::new(&mut s, in_order(1)).unwrap();
        l.next_batch().unwrap().ids.remove(0)
    };
    let wiki = read_all(&[fixtures().join("wiki_small.txt")], line_docs()).unwrap();
    let first_doc = tok.encode(texts(&wiki)[0]).unwrap();
    assert_eq!(block(Part::Val), first_doc[..8]);
    assert_ne!(block(Part::Train), first_doc[..8]);
}

#[test]
fn sft_from_jsonl_pairs_with_custom_fields() {
    let tok = trained_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gsm.jsonl.gz");
    let rows = concat!(
        "{\"question\": \"the cat?\", \"answer\": \"the mat\"}\n",
        "{\"question\": \"q\", \"answer\": \"a\"}\n"
    )
    .as_bytes();
    write(&p, &gzip(rows));
    let fields = Fields::Pair {
        prompt: "question".into(),
        response: "answer".into(),
    };
    let corpus = Corpus::open(
        &[p],
        CorpusOptions {
            fields,
            line_docs: false,
        },
    )
    .unwrap();
    let format = SftFormat {
        bos: 1,
        sep: 2,
        eos: 0,
        pad: 3,
        cutoff_len: 24,
    };
    let mut l = Loader::new(
        SftSource::new(corpus, tok.clone(), format).unwrap(),
        in_order(2),
    )
    .unwrap();
    let b = l.next_batch().unwrap();
    let want = sft_example(
        &tok.encode("the cat?").unwrap(),
        &tok.encode("the mat").unwrap(),
        &format,
    )
    .unwrap();
    assert_eq!(b.ids[0], want.ids);
    assert_eq!(b.src_mask[0], want.src_mask);
    assert_eq!(b.ids[1].len(), 24);

    // Plain text where pairs are expected is an error, not a silent empty prompt.
    let text = Corpus::open(
        &[fixtures().join("c4_small.json")],
        CorpusOptions::default(),
    )
    .unwrap();
    let mut s = SftSource::new(text, tok, format).unwrap();
    let mut l = Loader::new(&mut s, in_order(1)).unwrap();
    assert!(l
        .next_batch()
        .unwrap_err()
        .to_string()
        .contains("prompt/response"));
}

#[test]
fn cli_trains_a_tokenizer_file() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tokenizer.json");
    let data = fixtures();
    let args = ["dlm", "tokenizer", "train", "--vocab-size", "320", "--data"];
    let cli = dlm::cli::Cli::parse_from(args.iter().map(|s| s.to_string()).chain([
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]));
    dlm::cli::run(cli).unwrap();
    let tok = Tokenizer::from_file(&out).unwrap();
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert!(tok.vocab_size() <= 320);
}
