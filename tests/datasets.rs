//! The real-format training sources, on small files the tests write in exactly those formats:
//! LUNA16 (MetaImage .mhd/.raw in subsetN folders, annotations.csv) and LIDC-IDRI (a DICOM series
//! with the readers' XML beside it).

use jnsc::datasets::Source;
use jnsc::datasets::lidc::{LidcSource, consensus_labels, group_marks, parse_xml};
use jnsc::datasets::luna16::Luna16Source;
use jnsc::volume::geometry::Geometry;
use jnsc::volume::series::{files_in, load_series};
use jnsc::volume::{Volume, metaimage};
use std::fmt::Write;

/// A CT-like volume: lung air with a solid sphere of `radius` mm at `centre` (world mm).
fn phantom(geometry: Geometry, centre: [f64; 3], radius: f64) -> Volume<f32> {
    let mut volume = Volume::filled(geometry, -800.0f32);
    let [ni, nj, nk] = geometry.size;
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let p = geometry.index_to_patient([i as f64, j as f64, k as f64]);
                let d: f64 = (0..3)
                    .map(|a| (p[a] - centre[a]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                if d <= radius {
                    volume.data[geometry.offset(i, j, k)] = 0.0;
                }
            }
        }
    }
    volume
}

fn count(labels: &[u8], label: u8) -> usize {
    labels.iter().filter(|&&l| l == label).count()
}

const LUNA_UID: &str = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000001";
const LUNA_OTHER: &str = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000002";
const LUNA_CENTRE: [f64; 3] = [-15.3, -4.8, -95.0];

/// A LUNA16 tree: one annotated scan in subset3, one without nodules in subset0.
fn luna16_tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let geometry = Geometry {
        origin: [-40.0, -30.0, -120.0],
        spacing: [0.7, 0.7, 2.5],
        direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        size: [64, 64, 24],
    };
    let (centre, uid, other) = (LUNA_CENTRE, LUNA_UID, LUNA_OTHER);
    for (subset, id) in [(3, uid), (0, other)] {
        let dir = root.path().join(format!("subset{subset}"));
        std::fs::create_dir_all(&dir).unwrap();
        metaimage::write(
            &dir.join(format!("{id}.mhd")),
            &phantom(geometry, centre, 6.0),
        )
        .unwrap();
    }
    std::fs::write(
        root.path().join("annotations.csv"),
        format!(
            "seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},{},{},{},12.0\n\
             1.2.3.not.here,0,0,0,5\n",
            centre[0], centre[1], centre[2]
        ),
    )
    .unwrap();
    root
}

#[test]
fn luna16_scans_come_from_their_subsets_with_sphere_labels_on_a_1mm_grid() {
    let root = luna16_tree();
    let (centre, uid, other) = (LUNA_CENTRE, LUNA_UID, LUNA_OTHER);
    let source = Luna16Source::open(root.path(), &[3]).unwrap();
    assert_eq!(source.len(), 1);
    assert_eq!(source.ids().collect::<Vec<_>>(), [uid]);
    let scan = source.scan(0).unwrap();
    assert_eq!(scan.id, uid);
    assert_eq!(scan.hu.geometry.spacing, [1.0; 3]);
    assert_eq!(scan.nodules.len(), 1);
    assert!(scan.nodules[0].ratings.is_empty(), "LUNA16 has no ratings");
    // The label is the annotated sphere: about 4/3 pi 6^3 = 905 voxels, centred on the nodule.
    let voxels = count(&scan.labels.data, 1);
    assert!((780..=1030).contains(&voxels), "{voxels} labelled voxels");
    let at = scan
        .hu
        .geometry
        .patient_to_index(centre)
        .map(|v| v.round() as usize);
    assert_eq!(scan.labels.at(at[0], at[1], at[2]), 1);
    assert!(
        scan.hu.at(at[0], at[1], at[2]) > -100.0,
        "the nodule is where it is labelled"
    );
    assert!(scan.hu.at(2, 2, 2) < -700.0);

    let both = Luna16Source::open(root.path(), &[0, 3]).unwrap();
    assert_eq!(both.len(), 2);
    let unannotated = both.scan(0).unwrap();
    assert_eq!(unannotated.id, other);
    assert!(unannotated.nodules.is_empty() && count(&unannotated.labels.data, 1) == 0);
    assert!(Luna16Source::open(root.path(), &[10]).is_err());
    assert!(
        Luna16Source::open(root.path(), &[5]).is_err(),
        "a missing subset is an error"
    );
}

/// A circle outline of `radius` pixels around (cx, cy), as LIDC edge map points.
fn circle(cx: f64, cy: f64, radius: f64) -> String {
    let mut xml = String::new();
    for step in 0..36 {
        let angle = step as f64 * std::f64::consts::TAU / 36.0;
        let _ = write!(
            xml,
            "<edgeMap><xCoord>{}</xCoord><yCoord>{}</yCoord></edgeMap>",
            (cx + radius * angle.cos()).round(),
            (cy + radius * angle.sin()).round()
        );
    }
    xml
}

/// One reader's nodule outlined on the given slices (SOP Instance UID, z).
fn nodule(id: &str, malignancy: Option<u8>, slices: &[(&str, f64)], outline: &str) -> String {
    let characteristics = malignancy
        .map(|m| format!("<characteristics><subtlety>4</subtlety><malignancy>{m}</malignancy></characteristics>"))
        .unwrap_or_default();
    let rois: String = slices
        .iter()
        .map(|(uid, z)| {
            format!(
                "<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{uid}</imageSOP_UID>\
                 <inclusion>TRUE</inclusion>{outline}</roi>"
            )
        })
        .collect();
    format!(
        "<unblindedReadNodule><noduleID>{id}</noduleID>{characteristics}{rois}</unblindedReadNodule>"
    )
}

#[test]
fn lidc_readers_marks_are_grouped_into_nodules_with_consensus_masks_and_ratings() {
    let root = tempfile::tempdir().unwrap();
    let case = root.path().join("LIDC-IDRI-0001").join("series");
    let written = jnsc::synth::series::write_ct_series(
        &jnsc::synth::series::SeriesSpec {
            slices: 20,
            rows: 64,
            columns: 64,
            seed: 3,
            ..Default::default()
        },
        &case,
    )
    .unwrap();
    let series = load_series(&files_in(&case).unwrap()).unwrap();
    // Slices in volume order, as (SOP Instance UID, z).
    let slice = |k: usize| {
        let s = &series.slices[k];
        (s.sop_instance_uid.as_str(), s.position[2])
    };
    let slices = |range: std::ops::Range<usize>| range.map(slice).collect::<Vec<_>>();
    let point = format!(
        "<roi><imageZposition>{}</imageZposition><imageSOP_UID>{}</imageSOP_UID>\
         <inclusion>TRUE</inclusion><edgeMap><xCoord>10</xCoord><yCoord>50</yCoord></edgeMap></roi>",
        slice(3).1,
        slice(3).0
    );
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <LidcReadMessage xmlns=\"http://www.nih.gov\" uid=\"1.3.6.1.4.1.14519.5.2.1.6279.6001.1\">\
         <ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{series}</SeriesInstanceUid>\
         <StudyInstanceUID>{study}</StudyInstanceUID></ResponseHeader>\
         <readingSession><annotationVersion>3.12</annotationVersion>\
         <servicingRadiologistID>reader-a</servicingRadiologistID>{n1}\
         <unblindedReadNodule><noduleID>small</noduleID>{point}</unblindedReadNodule>\
         <nonNodule><nonNoduleID>nn</nonNoduleID><imageZposition>0</imageZposition>\
         <imageSOP_UID>x</imageSOP_UID><locus><xCoord>5</xCoord><yCoord>5</yCoord></locus></nonNodule>\
         </readingSession>\
         <readingSession><servicingRadiologistID>reader-b</servicingRadiologistID>{a}</readingSession>\
         <readingSession><servicingRadiologistID>reader-c</servicingRadiologistID>{x}</readingSession>\
         </LidcReadMessage>",
        series = written.series_uid,
        study = written.study_uid,
        n1 = nodule(
            "Nodule 001",
            Some(4),
            &slices(8..13),
            &circle(32.0, 30.0, 5.0)
        ),
        a = nodule("IL057_1", Some(5), &slices(8..13), &circle(33.0, 30.0, 5.0)),
        x = nodule(
            "Nodule 002",
            Some(2),
            &slices(2..5),
            &circle(15.0, 15.0, 4.0)
        ),
    );
    std::fs::write(case.join("069.xml"), &xml).unwrap();

    let annotations = parse_xml(&xml).unwrap();
    assert_eq!(annotations.series_uid, written.series_uid);
    assert_eq!(annotations.readers, 3);
    assert_eq!(annotations.marks.len(), 4, "non-nodules are not marks");
    assert_eq!(
        annotations.marks[1].malignancy, None,
        "under 3 mm: no rating"
    );
    assert_eq!(annotations.marks[2].reader, 1);
    // Readers a and b outlined the same nodule; reader c another; the point mark is left out.
    let nodules = group_marks(&series, &annotations);
    assert_eq!(nodules, vec![vec![0, 2], vec![3]]);
    // Consensus (half of two readers = either) on the source grid: 5 slices of a ~r5 disc.
    let labels = consensus_labels(&series, &annotations, &nodules);
    let first = count(&labels.data, 1);
    assert!(
        (5 * 70..=5 * 130).contains(&first),
        "{first} pixels of nodule 1"
    );
    let second = count(&labels.data, 2);
    assert!(
        (3 * 40..=3 * 80).contains(&second),
        "{second} pixels of nodule 2"
    );

    let source = LidcSource::open(root.path()).unwrap();
    assert_eq!(source.len(), 1);
    let scan = source.scan(0).unwrap();
    assert_eq!(scan.id, written.series_uid);
    assert_eq!(scan.hu.geometry.spacing, [1.0; 3]);
    let ratings: Vec<Vec<u8>> = scan.nodules.iter().map(|n| n.ratings.clone()).collect();
    assert_eq!(ratings, vec![vec![4, 5], vec![2]]);
    // On the 1 mm grid the nodule keeps its volume: ~5 x 1.25 mm x pi (5 x 0.7 mm)^2 ~ 240 mm3.
    let volume = count(&scan.labels.data, 1);
    assert!((150..=420).contains(&volume), "{volume} mm3 for nodule 1");
    assert!(count(&scan.labels.data, 2) > 0);

    // An XML for another series is refused, not silently mislabelled.
    std::fs::write(
        case.join("069.xml"),
        xml.replace(&written.series_uid, "1.2.3.4"),
    )
    .unwrap();
    let err = LidcSource::open(root.path()).unwrap().scan(0).unwrap_err();
    assert!(
        err.to_string().contains("describes series 1.2.3.4"),
        "{err}"
    );
    assert!(parse_xml("<LidcReadMessage>").is_err());
    assert!(LidcSource::open(&root.path().join("LIDC-IDRI-0001").join("none")).is_err());
}

#[test]
fn the_trainer_reads_luna16_through_its_data_configuration() {
    use jnsc::train::trainer::{DataConfig, TrainConfig, Trainer};
    let root = luna16_tree();
    let text = format!(
        "epochs = 1\nsegmentation_epochs = 1\npatch = 32\n[data]\nkind = \"luna16\"\n\
         root = \"{}\"\nsubsets = [0, 3]\n",
        root.path().display()
    );
    let config: TrainConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        config.data,
        DataConfig::Luna16 {
            root: root.path().to_owned(),
            subsets: vec![0, 3]
        }
    );
    let run = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::open(run.path(), config, true).unwrap();
    let metrics = trainer.run(1, true).unwrap();
    assert_eq!(metrics.len(), 1);
    assert!(metrics[0].segmentation_loss.is_finite() && metrics[0].segmentation_loss > 0.0);
    assert!(toml::from_str::<TrainConfig>("[data]\nkind = \"imagenet\"").is_err());
}
