//! `scheduler run`: the rotation scheduler loop.

use keywheel_core::{Scheduler, SchedulerConfig, TickReport};

use crate::cli::SchedulerRunArgs;
use crate::error::{CliError, OK, PROBLEMS};
use crate::output::{TickJson, outln};
use crate::store::{self, Settings};

use super::{cancel_on_signal, engine_timing, print_rotation, rotation_code, warn_without_sources};

pub(super) fn print_tick(tick: &TickReport) {
    let due: Vec<String> = tick.due.iter().map(|d| format!("{} ({:?})", d.keyring, d.reason)).collect();
    outln!(
        "{} tick: due [{}], rotated {}, retired {}, failed {}{}",
        tick.at,
        due.join(", "),
        tick.rotations.len(),
        tick.retired.len(),
        tick.failed.len(),
        if tick.paused { " (paused)" } else { "" }
    );
    for r in &tick.rotations {
        print_rotation(r);
    }
    for (id, v) in &tick.retired {
        outln!("  retired {id} {v}");
    }
    for (id, e) in &tick.failed {
        outln!("  FAILED {id}: {e}");
    }
}

pub(super) async fn scheduler_run(settings: &Settings, args: &SchedulerRunArgs, json: bool) -> Result<u8, CliError> {
    let opened = store::open(settings).await?;
    let rotator = store::rotator(settings, &opened).await?;
    warn_without_sources(settings);
    let config = SchedulerConfig {
        tick: std::time::Duration::from_secs(args.tick),
        max_concurrent: args.max_concurrent as usize,
        auto_retire: !args.no_retire,
        rotate: engine_timing(settings, None, None)?,
    };
    let scheduler = Scheduler::new(rotator, config);
    let mut problems = false;
    let mut on_tick = |result: &keywheel_core::Result<TickReport>| match result {
        Ok(tick) => {
            problems |= !tick.failed.is_empty() || tick.rotations.iter().any(|r| rotation_code(r) == PROBLEMS);
            if json {
                // One JSON document per line, for log shippers.
                match serde_json::to_string(&TickJson::from(tick)) {
                    Ok(line) => outln!("{line}"),
                    Err(e) => eprintln!("keywheel: cannot encode tick report: {e}"),
                }
            } else {
                print_tick(tick);
            }
        }
        Err(e) => {
            problems = true;
            eprintln!("keywheel: scheduler tick failed: {e}");
        }
    };
    if args.once {
        let result = scheduler.tick().await;
        on_tick(&result);
    } else {
        let shutdown = cancel_on_signal();
        if !json {
            eprintln!("keywheel: scheduler running (tick every {} s); stop with Ctrl-C or SIGTERM", args.tick);
        }
        scheduler.run(shutdown, on_tick).await;
        if !json {
            eprintln!("keywheel: scheduler stopped cleanly");
        }
    }
    Ok(if problems { PROBLEMS } else { OK })
}
