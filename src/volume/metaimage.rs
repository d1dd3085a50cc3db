//! MetaImage (.mhd + .raw) writer, so a resampled volume or a mask opens in 3D Slicer, ITK-SNAP
//! or SimpleITK with its geometry.

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
    // TransformMatrix lists the direction matrix row by row, whose columns are the axes.
    let matrix: Vec<String> = (0..3)
        .flat_map(|r| (0..3).map(move |c| format!("{}", d[c][r])))
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
