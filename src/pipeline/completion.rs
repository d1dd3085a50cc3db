//! Series completion: a series with no new instance for `stable_age` is complete and gets a
//! queued job. The state lives in SQLite, so after a restart incomplete series keep waiting and
//! queued jobs stay queued. A late instance puts its series back to 'receiving' (done by the
//! index when it records the instance), and the next completion refreshes or re-creates its job.

use crate::store::db::{Index, now_ms};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info};

/// Checks for idle series until `shutdown` turns true.
pub async fn run(index: Index, stable_age: Duration, mut shutdown: watch::Receiver<bool>) {
    let period = (stable_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let idle_since = now_ms() - stable_age.as_millis() as i64;
        match index.complete_idle_series(idle_since).await {
            Ok(jobs) => {
                for job in jobs {
                    info!(
                        job = job.id,
                        series = %job.series_uid,
                        instances = job.instance_count,
                        "series complete; job queued"
                    );
                }
            }
            Err(e) => error!(error = %e, "cannot check for complete series"),
        }
    }
}
