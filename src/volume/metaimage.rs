//! MetaImage (.mhd + .raw): the writer, so a resampled volume or a mask opens in 3D Slicer,
//! ITK-SNAP or SimpleITK with its geometry, and the reader for LUNA16's volumes and our own
//! files. As in ITK, TransformMatrix lists the direction of axis i in its row i.

use crate::volume::Volume;
use std::io::Write;
use std::path::Path;

/// A voxel type MetaImage can store.
pub trait MetaElement: Copy {
    const TYPE: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
}

impl MetaElement for f32 {
    const TYPE: &'static str = "MET_FLOAT";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl MetaElement for u8 {
    const TYPE: &'static str = "MET_UCHAR";
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

/// Writes `path` (.mhd) and its data file beside it (same stem, .raw).
pub fn write<T: MetaElement>(path: &Path, volume: &Volume<T>) -> std::io::Result<()> {
    let g = volume.geometry;
    let raw = path.with_extension("raw");
    let raw_name = raw
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let d = g.direction;
    let matrix: Vec<String> = (0..3)
        .flat_map(|axis| (0..3).map(move |c| format!("{}", d[axis][c])))
        .collect();
    let header = format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
         CompressedData = False\nTransformMatrix = {}\nOffset = {} {} {}\n\
         CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = {} {} {}\n\
         DimSize = {} {} {}\nElementType = {}\nElementDataFile = {}\n",
        matrix.join(" "),
        g.origin[0],
        g.origin[1],
        g.origin[2],
        g.spacing[0],
        g.spacing[1],
        g.spacing[2],
        g.size[0],
        g.size[1],
        g.size[2],
        T::TYPE,
        raw_name
    );
    std::fs::write(path, header)?;
    let mut bytes = Vec::with_capacity(volume.data.len() * std::mem::size_of::<T>());
    for &v in &volume.data {
        v.write_le(&mut bytes);
    }
    std::fs::File::create(raw)?.write_all(&bytes)
}

/// A MetaImage that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ReadError {
    pub path: String,
    pub reason: String,
}

/// Turns one element's bytes (first `width` of 8; big endian or not) into a value.
type Decoder = fn([u8; 8], bool) -> f32;

/// Reads a 3-D MetaImage (.mhd with its data file, or .mha with the data inline; uncompressed)
/// of any common scalar type, as f32.
pub fn read(path: &Path) -> Result<Volume<f32>, ReadError> {
    let fail = |reason: String| ReadError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    // The header is text lines up to and including ElementDataFile.
    let mut fields = std::collections::HashMap::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| at + p + 1);
        let line = String::from_utf8_lossy(&bytes[at..end]).trim().to_owned();
        at = end;
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().to_owned();
            let done = key == "ElementDataFile";
            fields.insert(key, value.trim().to_owned());
            if done {
                break;
            }
        }
    }
    let get = |key: &str| {
        fields
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| fail(format!("no {key} in the header")))
    };
    let numbers = |key: &str, n: usize| -> Result<Vec<f64>, ReadError> {
        let v: Vec<f64> = get(key)?
            .split_whitespace()
            .map(|t| t.parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| fail(format!("{key} is not a list of numbers")))?;
        if v.len() != n {
            return Err(fail(format!("{key} has {} values, expected {n}", v.len())));
        }
        Ok(v)
    };
    if get("NDims")? != "3" {
        return Err(fail("only 3-D images are supported".into()));
    }
    if fields
        .get("CompressedData")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(fail("compressed MetaImage data is not supported".into()));
    }
    let size = numbers("DimSize", 3)?;
    let size = [size[0] as usize, size[1] as usize, size[2] as usize];
    let spacing = match fields.contains_key("ElementSpacing") {
        true => numbers("ElementSpacing", 3)?,
        false => vec![1.0; 3],
    };
    let origin_key = ["Offset", "Origin", "Position"]
        .into_iter()
        .find(|k| fields.contains_key(*k));
    let origin = match origin_key {
        Some(k) => numbers(k, 3)?,
        None => vec![0.0; 3],
    };
    let matrix_key = ["TransformMatrix", "Rotation", "Orientation"]
        .into_iter()
        .find(|k| fields.contains_key(*k));
    let m = match matrix_key {
        Some(k) => numbers(k, 9)?,
        None => vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    };
    let big_endian = ["BinaryDataByteOrderMSB", "ElementByteOrderMSB"]
        .iter()
        .any(|k| {
            fields
                .get(*k)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        });
    let (width, decode): (usize, Decoder) = match get("ElementType")? {
        "MET_UCHAR" => (1, |b, _| f32::from(b[0])),
        "MET_CHAR" => (1, |b, _| f32::from(b[0] as i8)),
        "MET_SHORT" => (2, |b, be| {
            let a = [b[0], b[1]];
            f32::from(if be {
                i16::from_be_bytes(a)
            } else {
                i16::from_le_bytes(a)
            })
        }),
        "MET_USHORT" => (2, |b, be| {
            let a = [b[0], b[1]];
            f32::from(if be {
                u16::from_be_bytes(a)
            } else {
                u16::from_le_bytes(a)
            })
        }),
        "MET_INT" => (4, |b, be| {
            let a = [b[0], b[1], b[2], b[3]];
            (if be {
                i32::from_be_bytes(a)
            } else {
                i32::from_le_bytes(a)
            }) as f32
        }),
        "MET_FLOAT" => (4, |b, be| {
            let a = [b[0], b[1], b[2], b[3]];
            if be {
                f32::from_be_bytes(a)
            } else {
                f32::from_le_bytes(a)
            }
        }),
        "MET_DOUBLE" => (8, |b, be| {
            (if be {
                f64::from_be_bytes(b)
            } else {
                f64::from_le_bytes(b)
            }) as f32
        }),
        other => return Err(fail(format!("element type {other} is not supported"))),
    };
    let count = size[0] * size[1] * size[2];
    let data_file = get("ElementDataFile")?;
    let raw = if data_file.eq_ignore_ascii_case("LOCAL") {
        bytes[at..].to_vec()
    } else {
        let raw_path = path.parent().unwrap_or(Path::new(".")).join(data_file);
        std::fs::read(&raw_path).map_err(|e| fail(format!("{}: {e}", raw_path.display())))?
    };
    if raw.len() < count * width {
        return Err(fail(format!(
            "data holds {} bytes, {count} voxels of {width} bytes need {}",
            raw.len(),
            count * width
        )));
    }
    let data = raw[..count * width]
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            decode(b, big_endian)
        })
        .collect();
    let axis = |i: usize| [m[3 * i], m[3 * i + 1], m[3 * i + 2]];
    Ok(Volume {
        geometry: crate::volume::geometry::Geometry {
            origin: [origin[0], origin[1], origin[2]],
            spacing: [spacing[0], spacing[1], spacing[2]],
            direction: [axis(0), axis(1), axis(2)],
            size,
        },
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::geometry::Geometry;

    #[test]
    fn what_is_written_reads_back_with_its_geometry() {
        let (c, s) = (0.8f64, 0.6f64);
        let geometry = Geometry {
            origin: [-12.5, 40.0, 7.25],
            spacing: [0.7, 0.8, 2.5],
            direction: [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]],
            size: [3, 4, 5],
        };
        let volume = Volume {
            geometry,
            data: (0..60).map(|v| v as f32 * 1.5 - 20.0).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mhd");
        write(&path, &volume).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.geometry, geometry);
        assert_eq!(back.data, volume.data);
    }

    #[test]
    fn luna16_style_short_volumes_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let header = "ObjectType = Image\nNDims = 3\nBinaryData = True\n\
            BinaryDataByteOrderMSB = False\nCompressedData = False\n\
            TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -198.1 -195.0 -335.2\n\
            CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\n\
            ElementSpacing = 0.76 0.76 2.5\nDimSize = 2 2 2\nElementType = MET_SHORT\n\
            ElementDataFile = scan.raw\n";
        std::fs::write(dir.path().join("scan.mhd"), header).unwrap();
        let values: [i16; 8] = [-1024, -1000, 0, 40, 100, -3000, 1200, 7];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("scan.raw"), &raw).unwrap();
        let v = read(&dir.path().join("scan.mhd")).unwrap();
        assert_eq!(v.geometry.size, [2, 2, 2]);
        assert_eq!(v.geometry.spacing, [0.76, 0.76, 2.5]);
        assert_eq!(v.geometry.origin, [-198.1, -195.0, -335.2]);
        assert_eq!(v.data, values.map(f32::from));
        std::fs::write(dir.path().join("scan.raw"), &raw[..10]).unwrap();
        let e = read(&dir.path().join("scan.mhd")).unwrap_err().to_string();
        assert!(e.contains("need 16"), "{e}");
        std::fs::write(
            dir.path().join("bad.mhd"),
            header.replace("MET_SHORT", "MET_LONG_LONG"),
        )
        .unwrap();
        let e = read(&dir.path().join("bad.mhd")).unwrap_err().to_string();
        assert!(e.contains("MET_LONG_LONG"), "{e}");
    }
}
