//! The LUNA16 challenge's CSV files: annotations.csv and annotations_excluded.csv (the
//! reference standard's findings), submission.csv (a CAD system's marks) and seriesuids.csv.
//! Read by the evaluation (`eval::froc`) and by the LUNA16 training reader (`datasets::luna16`).

/// One finding of a reference standard (annotations.csv or annotations_excluded.csv).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub series: String,
    pub center: [f64; 3],
    pub diameter_mm: f64,
    /// The coordinates as written in the CSV (the script echoes them in its missed-nodule list).
    pub center_text: [String; 3],
}

/// One CAD mark (a row of submission.csv).
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub series: String,
    pub center: [f64; 3],
    pub probability: f64,
}

/// Errors reading the CSV inputs.
#[derive(Debug, thiserror::Error)]
#[error("{file}, line {line}: {reason}")]
pub struct CsvError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Parses annotations.csv / annotations_excluded.csv (header, then
/// seriesuid,coordX,coordY,coordZ,diameter_mm).
pub fn parse_findings(file: &str, text: &str) -> Result<Vec<Finding>, CsvError> {
    Ok(records(file, text)?
        .into_iter()
        .map(|r| Finding {
            series: r.series,
            center: r.center,
            diameter_mm: r.value,
            center_text: r.center_text,
        })
        .collect())
}

/// Parses submission.csv (header, then seriesuid,coordX,coordY,coordZ,probability).
pub fn parse_marks(file: &str, text: &str) -> Result<Vec<Mark>, CsvError> {
    let mark = |r: Record| Mark {
        series: r.series,
        center: r.center,
        probability: r.value,
    };
    Ok(records(file, text)?.into_iter().map(mark).collect())
}

/// One row of the LUNA16 CSVs: series, a point, and one number (diameter or probability).
struct Record {
    series: String,
    center: [f64; 3],
    center_text: [String; 3],
    value: f64,
}

fn records(file: &str, text: &str) -> Result<Vec<Record>, CsvError> {
    rows(file, text, 5)?
        .into_iter()
        .map(|(line, f)| {
            Ok(Record {
                series: f[0].to_owned(),
                center: [
                    number(file, line, f[1])?,
                    number(file, line, f[2])?,
                    number(file, line, f[3])?,
                ],
                center_text: [f[1].to_owned(), f[2].to_owned(), f[3].to_owned()],
                value: number(file, line, f[4])?,
            })
        })
        .collect()
}

/// Parses seriesuids.csv: one UID per line, no header.
pub fn parse_series_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim().trim_matches(',').to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The data rows (after the header) split into `columns` fields, with their line numbers.
fn rows<'a>(
    file: &str,
    text: &'a str,
    columns: usize,
) -> Result<Vec<(usize, Vec<&'a str>)>, CsvError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < columns {
            return Err(CsvError {
                file: file.to_owned(),
                line: i + 1,
                reason: format!("expected {columns} fields, found {}", fields.len()),
            });
        }
        out.push((i + 1, fields));
    }
    Ok(out)
}

fn number(file: &str, line: usize, field: &str) -> Result<f64, CsvError> {
    field.parse().map_err(|_| CsvError {
        file: file.to_owned(),
        line,
        reason: format!("`{field}` is not a number"),
    })
}
