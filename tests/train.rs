//! Training: a short run on a few synthetic scans makes the segmentation loss fall and the Dice
//! rise; a run stopped after a checkpoint and resumed ends bit for bit where an uninterrupted
//! run ends (weights, optimizer, sampling and pseudo-labels all restored); scans held on disk
//! train exactly as scans held in memory, and are prepared once; self-distillation blends a
//! teacher into the segmentation target.

use jnsc::train::prepared::ScanStorage;
use jnsc::train::pseudo::LabelMode;
use jnsc::train::trainer::{Distill, TrainConfig, Trainer};

/// Small patches on full-size synthetic scans (smaller scans would cut most nodules off).
fn small(epochs: usize) -> TrainConfig {
    TrainConfig {
        scans: 3,
        patch: 32,
        epochs,
        segmentation_epochs: 1,
        pseudo_warmup_epochs: 0,
        lr_step_epochs: 100,
        labels: LabelMode::Pseudo,
        ..TrainConfig::default()
    }
}

fn weights(trainer: &Trainer) -> Vec<(String, Vec<f32>)> {
    let data = trainer.vars().data().lock().unwrap();
    let mut out: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_short_run_lowers_the_loss_and_raises_the_dice() {
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        scans: 2,
        joint: false,
        ..small(60)
    };
    let mut trainer = Trainer::open(dir.path(), config, true).unwrap();
    let m = trainer.run(60, true).unwrap();
    let mean = |epochs: &[jnsc::train::trainer::EpochMetrics],
                f: fn(&jnsc::train::trainer::EpochMetrics) -> f64| {
        epochs.iter().map(f).sum::<f64>() / epochs.len() as f64
    };
    let (loss_early, loss_late) = (
        mean(&m[..5], |e| e.segmentation_loss),
        mean(&m[55..], |e| e.segmentation_loss),
    );
    assert!(
        loss_late < 0.6 * loss_early,
        "segmentation loss {loss_early:.4} -> {loss_late:.4}"
    );
    // Dice is noisy epoch to epoch (random patches): compare means.
    let (dice_early, dice_late) = (mean(&m[..5], |e| e.dice), mean(&m[45..], |e| e.dice));
    assert!(
        dice_late > 3.0 * dice_early && dice_late > 0.02,
        "Dice {dice_early:.4} -> {dice_late:.4}"
    );
    // Metrics land in metrics.csv, one row per epoch.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 61);
}

/// Self-distillation (`[distill]`): with the teacher's share at 0 the target is the labels and
/// training is bit for bit training without a teacher; at 0.5 (the shipped model as teacher, two
/// mirrored passes) the weights end elsewhere.
#[test]
fn distillation_blends_the_teacher_into_the_segmentation_target() {
    let teacher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/jnsc.safetensors");
    let run = |distill: Option<Distill>| {
        let dir = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            joint: false,
            distill,
            ..small(2)
        };
        let mut trainer = Trainer::open(dir.path(), config, true).unwrap();
        trainer.run(2, true).unwrap();
        weights(&trainer)
    };
    let taught = |weight| {
        Some(Distill {
            teacher: teacher.clone(),
            mirrors: 2,
            weight,
        })
    };
    let plain = run(None);
    assert!(
        plain == run(taught(0.0)),
        "a teacher of weight 0 changed training"
    );
    assert!(plain != run(taught(0.5)), "the teacher changed nothing");
}

#[test]
fn resuming_from_a_checkpoint_continues_exactly() {
    let config = small(8);
    let straight = tempfile::tempdir().unwrap();
    let mut a = Trainer::open(straight.path(), config.clone(), true).unwrap();
    a.run(8, true).unwrap();

    let stopped = tempfile::tempdir().unwrap();
    let mut b = Trainer::open(stopped.path(), config.clone(), true).unwrap();
    b.run(3, true).unwrap();
    drop(b);
    let mut b = Trainer::open(stopped.path(), config, true).unwrap();
    assert_eq!(b.epochs_done(), 3);
    b.run(8, true).unwrap();

    assert_eq!(weights(&a), weights(&b));
    assert_eq!(a.pseudo_labels(), b.pseudo_labels());
    // The pseudo-labels were updated (epochs 2-8 are past the warm-up) and stayed in [0, 1].
    assert!(!a.pseudo_labels().is_empty());
    assert!(
        a.pseudo_labels()
            .values()
            .any(|l| (l.q - l.soft_target).abs() > 1e-9)
    );
    assert!(
        a.pseudo_labels()
            .values()
            .all(|l| (0.0..=1.0).contains(&l.q))
    );
}

#[test]
fn a_run_directory_refuses_another_configuration() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::open(dir.path(), small(2), true)
        .unwrap()
        .run(1, true)
        .unwrap();
    let e = Trainer::open(dir.path(), small(3), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another configuration"), "{e}");
}

/// Every file under `dir` with its modification time.
fn stamps(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn scans_held_on_disk_train_exactly_as_in_memory_and_are_prepared_once() {
    let in_memory = small(3);
    let on_disk = TrainConfig {
        scan_storage: ScanStorage::Disk,
        ..small(3)
    };
    let straight = tempfile::tempdir().unwrap();
    let mut a = Trainer::open(straight.path(), in_memory.clone(), true).unwrap();
    a.run(3, true).unwrap();
    assert!(!straight.path().join("prepared").exists());

    // One epoch on disk; the three scans are prepared there, each whole.
    let run = tempfile::tempdir().unwrap();
    let prepared = run.path().join("prepared");
    Trainer::open(run.path(), on_disk.clone(), true)
        .unwrap()
        .run(1, true)
        .unwrap();
    let files = stamps(&prepared);
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut expected = vec!["source.json".to_owned()];
    for n in 0..3 {
        for ext in ["hu", "json", "labels"] {
            expected.push(format!("scan-{n:05}.{ext}"));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    let hu_bytes = std::fs::metadata(prepared.join("scan-00000.hu"))
        .unwrap()
        .len();
    assert_eq!(hu_bytes, 4 * 192 * 192 * 160);

    // Resumed on disk, nothing is prepared again; then resumed in memory, which the run
    // allows, since where the scans are held does not change the result.
    Trainer::open(run.path(), on_disk.clone(), true)
        .unwrap()
        .run(2, true)
        .unwrap();
    assert_eq!(stamps(&prepared), files, "scans prepared again on resume");
    let mut b = Trainer::open(run.path(), in_memory, true).unwrap();
    assert_eq!(b.epochs_done(), 2);
    b.run(3, true).unwrap();
    assert_eq!(weights(&a), weights(&b));
    assert_eq!(a.pseudo_labels(), b.pseudo_labels());

    // A damaged scan file is a clear error naming it, not a panic or a silent short scan.
    let damaged = tempfile::tempdir().unwrap();
    let mut c = Trainer::open(damaged.path(), on_disk, true).unwrap();
    let hu = damaged.path().join("prepared").join("scan-00001.hu");
    std::fs::write(&hu, [0u8; 100]).unwrap();
    let e = format!("{:#}", c.run(1, true).err().unwrap());
    assert!(
        e.contains("scan-00001.hu") && e.contains("holds 100 bytes"),
        "{e}"
    );
}
