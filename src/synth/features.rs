//! What a synthetic nodule is drawn with: its type, margin and location, and the features the
//! LIDC-IDRI calibration draws jointly (`calibration`) before `nodules` gives them a shape.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoduleType {
    Solid,
    PartSolid,
    GroundGlass,
    Calcified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Margin {
    Round,
    Lobulated,
    Spiculated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Location {
    Isolated,
    JuxtaVascular,
    JuxtaPleural,
}

/// Features a nodule is drawn with (LIDC's: spiculation and lobulation ratings >= 3).
#[derive(Debug, Clone, Copy)]
pub struct NoduleFeatures {
    pub diameter_mm: f64,
    pub kind: NoduleType,
    pub spiculated: bool,
    pub lobulated: bool,
}

impl NoduleFeatures {
    /// The margin shown: spiculated wins over lobulated.
    pub fn margin(&self) -> Margin {
        if self.spiculated {
            Margin::Spiculated
        } else if self.lobulated {
            Margin::Lobulated
        } else {
            Margin::Round
        }
    }
}
