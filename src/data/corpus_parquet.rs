//! Parquet corpus files (reference-semantics §1.6 input: FineWeb `sample-100BT` ships as Parquet
//! with a `text` column). Only the configured string columns are read (a projection), one row
//! group at a time, so the other FineWeb columns (url, metadata) cost nothing.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::types::Type;

use super::corpus::{CorpusStats, DocSource, Document, Fields};
use crate::error::{Error, Result};

pub(crate) struct ParquetSource {
    path: PathBuf,
    rows: RowIter<'static>,
    fields: Fields,
    row: u64,
}

impl ParquetSource {
    pub(crate) fn open(path: &Path, fields: &Fields) -> Result<Self> {
        let bad = |m: String| Error::data(path, m);
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader =
            SerializedFileReader::new(file).map_err(|e| bad(format!("not a Parquet file: {e}")))?;
        let root = reader.metadata().file_metadata().schema();
        // The projection keeps `names()` order, so row column i is field i.
        let columns = fields
            .names()
            .into_iter()
            .map(|name| {
                root.get_fields()
                    .iter()
                    .find(|f| f.name() == name)
                    .cloned()
                    .ok_or_else(|| {
                        let have: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
                        bad(format!("missing column {name:?} (columns: {have:?})"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let projection = Type::group_type_builder(root.name())
            .with_fields(columns)
            .build()
            .map_err(|e| bad(format!("projecting columns: {e}")))?;
        let rows = RowIter::from_file_into(Box::new(reader))
            .project(Some(projection))
            .map_err(|e| bad(format!("projecting columns: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            rows,
            fields: fields.clone(),
            row: 0,
        })
    }
}

impl DocSource for ParquetSource {
    fn next_doc(&mut self, _stats: &mut CorpusStats) -> Result<Option<Document>> {
        let Some(row) = self.rows.next() else {
            return Ok(None);
        };
        self.row += 1;
        let at = || PathBuf::from(format!("{} (row {})", self.path.display(), self.row));
        let row = row.map_err(|e| Error::data(at(), e))?;
        let values = row
            .get_column_iter()
            .map(|(name, field)| match field {
                Field::Str(s) => Ok(s.clone()),
                // Binary columns without the UTF8 annotation still hold text in some dumps.
                Field::Bytes(b) => String::from_utf8(b.data().to_vec())
                    .map_err(|_| format!("column {name:?} is not UTF-8")),
                Field::Null => Err(format!("column {name:?} is null")),
                other => Err(format!("column {name:?} is not a string: {other}")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|m| Error::data(at(), m))?;
        Ok(Some(self.fields.document(values)))
    }
}
