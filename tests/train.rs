//! Training: a short run on a few synthetic scans makes the segmentation loss fall and the Dice
//! rise; a run stopped after a checkpoint and resumed ends bit for bit where an uninterrupted
//! run ends (weights, optimizer, sampling and pseudo-labels all restored).

use jnsc::train::pseudo::LabelMode;
use jnsc::train::trainer::{TrainConfig, Trainer};

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
