//! A model-based (stateful property) test of keywheel's safety invariants
//! (the [manual](keywheel_core::manual#8-lifecycle-invariants)), backend-agnostic.
//!
//! [`run_model`] generates random sequences of [`Op`]s — application writes
//! and reads on several keyrings of two tenants and two purposes (plus a
//! `Purpose::Custom("token")` alias of a `token` keyring), rotations,
//! emergencies, rollbacks, retirements (guarded, forced, destroying at once,
//! and the direct `Keywheel` calls), re-enabling of disabled versions, keyring
//! erasure, resumes, crashes in the middle of a re-encryption,
//! scheduler ticks with the clock jumping minutes to months, KEK rotations,
//! and several `Keywheel` instances sharing one store — runs them against the
//! real backends a [`ModelBackend`] provides, and checks the invariants after
//! every step. A failing sequence is shrunk to a minimal one and printed as a
//! list of ops that [`replay`] runs again (paste it into a regression test).
//!
//! The mapping from an op to library calls is in one place, `Case::apply`;
//! how instances are built in `Case::open_instance`.
//!
//! What is checked after every step (see `Case::check`):
//! * every value the application wrote decrypts to its last write, except
//!   values knowingly sacrificed by a forced retirement;
//! * I1: no version is Disabled or Retired while a value of a registered
//!   source uses it, unless the model forced that retirement (or erased the
//!   keyring);
//! * a Disabled version never decrypts (the checker's fresh snapshot refuses
//!   every stored value on it with `KeyDisabled`); a re-enabling succeeds only
//!   inside the version's quarantine and never for a compromised version;
//!   nothing is written under an erased keyring once the snapshot bound has
//!   passed after its erasure;
//! * I2: a version ever flagged compromised is never Active, and the flag stays;
//! * I3: once the snapshot bound ([`SNAPSHOT_BOUND`]) has passed after a
//!   version was flagged compromised, no write by any instance lands on it;
//! * I4: no instance is granted a keyring's lease while another instance
//!   holds it live; a rotate/resume/rollback/retire refused because of a live
//!   lease leaves that lease (holder, token, expiry) unchanged;
//! * I5: stored usage counts plus what live instances have not flushed are at
//!   least the encryptions the model made;
//! * I6: `Purpose::Custom("token")` and `Purpose::Token` name one keyring
//!   (equal ids, one store entry, one census entry);
//! * I7: a rollback (or a direct activation of a Deprecated version) only undoes
//!   the most recent rotation, inside the rollback window, and never toggles back;
//! * exactly one Active version per keyring once activated (none once erased); generations never
//!   go back and grow with every change.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keywheel_core::{
    AfterRotation, Algorithm, AuditSink, Census, Context, Error, KekRing, KeyEncryptionKey, KeyState, KeyStore,
    KeyVersion, KeyringChange, KeyringId, KeyringRecord, Keywheel, Lease, LocalKek, ManualClock, Policy, Purpose,
    RecordSource, ReplaceOutcome, Replacement, Result, RetireOptions, RotateOptions, RotationJob, Rotator, ScanRequest,
    Scheduler, SchedulerConfig, StoredValue, Timestamp, async_trait, version_of,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};

use crate::RecordSourceFixture;

/// One fresh, empty backend for one case.
pub struct ModelWorld {
    /// The key store every instance shares.
    pub store: Arc<dyn KeyStore>,
    /// The audit sink every instance shares.
    pub audit: Arc<dyn AuditSink>,
    /// Values of the `token` keyrings (table `tokens`, column `secret`; the
    /// keyring of a row is its tenant with purpose `token`).
    pub tokens: Arc<dyn RecordSourceFixture>,
    /// Values of the `database` keyrings (table `fields`, column `secret`).
    pub fields: Arc<dyn RecordSourceFixture>,
    /// Kept alive for the case (a temporary directory, a schema, …).
    pub guard: Box<dyn Any + Send + Sync>,
}

/// What a backend gives the model. The record-source fixtures must store a
/// value inserted with `Context::field(table, "secret", row)` at row `row`
/// (see [`row_of`]) and yield it with that same context.
#[async_trait]
pub trait ModelBackend: Send + Sync {
    /// A fresh, empty world (store, audit sink, two sources) for one case.
    async fn world(&self) -> ModelWorld;

    /// The store as another process opens it (default: the same handle).
    async fn reopen(&self, world: &ModelWorld) -> Arc<dyn KeyStore> {
        Arc::clone(&world.store)
    }
}

/// The `row` of a `Context::field` (for fixtures that key rows by it).
pub fn row_of(context: &Context) -> String {
    let pairs = context.pairs().expect("a valid context");
    let row = pairs.into_iter().find(|(n, _)| n == "row").expect("a field context has a row").1;
    String::from_utf8(row).expect("model row ids are text")
}

/// Which ops a run may generate.
pub type OpFilter = Arc<dyn Fn(&Op) -> bool + Send + Sync>;

/// How many cases and how long the sequences are.
#[derive(Clone)]
pub struct ModelConfig {
    /// Cases to run (`KEYWHEEL_MODEL_CASES` overrides it in [`ModelConfig::from_env`]).
    pub cases: u32,
    /// Longest op sequence (`KEYWHEEL_MODEL_MAX_OPS`).
    pub max_ops: usize,
    /// Only generate ops this accepts (to look past a known failure);
    /// `KEYWHEEL_MODEL_SKIP` sets it from a comma-separated list of op names
    /// (`Crash,DirectRetire`), where `alias` stands for ops on slot 4.
    pub filter: Option<OpFilter>,
    /// Invariants not to report (`I4`, `I6`, …), to look past a known
    /// failure; `KEYWHEEL_MODEL_IGNORE` sets it (comma-separated).
    pub ignore: Vec<String>,
}

impl fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelConfig").field("cases", &self.cases).field("max_ops", &self.max_ops).finish()
    }
}

impl ModelConfig {
    /// `cases` cases of up to 30 ops, unless the environment says otherwise.
    pub fn from_env(cases: u32) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        ModelConfig {
            cases: var("KEYWHEEL_MODEL_CASES").map_or(cases, |n| n as u32),
            max_ops: var("KEYWHEEL_MODEL_MAX_OPS").map_or(30, |n| n as usize),
            filter: std::env::var("KEYWHEEL_MODEL_SKIP").ok().filter(|s| !s.trim().is_empty()).map(|skip| {
                let skip: Vec<String> = skip.split(',').map(|s| s.trim().to_owned()).collect();
                Arc::new(move |op: &Op| !skip.iter().any(|s| op.is(s))) as OpFilter
            }),
            ignore: std::env::var("KEYWHEEL_MODEL_IGNORE")
                .map(|s| s.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        }
    }
}

impl Op {
    /// Whether this op is of the named kind (`Write`, `Crash`, …; `alias`:
    /// any op on slot 4, the `Purpose::Custom("token")` spelling).
    pub fn is(&self, name: &str) -> bool {
        let debug = format!("{self:?}");
        if name == "alias" {
            return debug.contains("slot: 4");
        }
        debug.split([' ', '{']).next() == Some(name)
    }
}

/// One step of a case. Indices are taken modulo what exists (`inst`), or name
/// fixed things: `slot` 0 = `t0/token`, 1 = `t1/token`, 2 = `t0/database`,
/// 3 = `t1/database`, 4 = `t0/` + `Purpose::Custom("token")` (the same keyring
/// as slot 0); `row` 0..3 within a slot; `version` is a version number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `Keywheel::create_keyring` (+ the model's policy) through the first instance.
    Create {
        /// Keyring slot.
        slot: u8,
    },
    /// Open another `Keywheel` instance on the same store (with the current
    /// KEK), its rotator registering the sources or none.
    Open {
        /// Whether its rotator and scheduler know the record sources.
        sources: bool,
    },
    /// The application encrypts a value and writes it to a row.
    Write {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Row.
        row: u8,
        /// Which plaintext.
        val: u8,
    },
    /// The application reads a row back and decrypts it.
    Read {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Row.
        row: u8,
    },
    /// `Keywheel::add_version` (a Pending version).
    AddVersion {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
    },
    /// `Rotator::rotate` with the stored policy.
    Rotate {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
    },
    /// `Rotator::emergency`.
    Emergency {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
    },
    /// `Rotator::rollback` with the stored policy.
    Rollback {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Re-encrypt back to the re-activated version.
        reencrypt: bool,
    },
    /// `Rotator::retire` with the stored policy, forced (with a reason) or not.
    Retire {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Version number.
        version: u8,
        /// Forced with a reason: values on it are knowingly sacrificed.
        forced: bool,
    },
    /// `Keywheel::retire` called directly.
    DirectRetire {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Version number.
        version: u8,
    },
    /// `Rotator::retire_with` destroying at once (guarded, no quarantine).
    RetireNow {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Version number.
        version: u8,
    },
    /// `Keywheel::enable`: of a Disabled version when a keyring has one (the
    /// slot's keyring first, `version` picks which), else of version `version`
    /// of the slot's keyring.
    Enable {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Version number.
        version: u8,
    },
    /// `Keywheel::destroy_keyring` (tenant erasure): every value of the
    /// keyring is knowingly sacrificed.
    DestroyKeyring {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Destroy the material at once instead of after the quarantine.
        now: bool,
    },
    /// `Keywheel::activate` called directly.
    DirectActivate {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// Version number.
        version: u8,
    },
    /// `Rotator::resume`.
    Resume {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
    },
    /// A rotation (or emergency) whose process dies in the re-encryption: the
    /// sources fail after `replaces` successful batches of one value, either
    /// before the failing batch is written or after; the job and the lease stay
    /// behind and the instance restarts (new cache, same configuration).
    Crash {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
        /// An emergency rotation instead of a regular one.
        emergency: bool,
        /// Batches written before the failure.
        replaces: u8,
        /// Whether the failing batch was written before the process died.
        written: bool,
    },
    /// Advance the clock, then one `Scheduler::tick` of an instance.
    Tick {
        /// Instance.
        inst: u8,
        /// Seconds the clock advances first.
        advance_secs: u64,
    },
    /// `Scheduler::request_emergency` (runs at that scheduler's next tick).
    RequestEmergency {
        /// Instance.
        inst: u8,
        /// Keyring slot.
        slot: u8,
    },
    /// Advance the clock only.
    Advance {
        /// Seconds.
        secs: u64,
    },
    /// `Rotator::rotate_kek` to the next KEK; instances opened later use it.
    RotateKek {
        /// Instance.
        inst: u8,
    },
}

const SLOTS: u8 = 5;
const ROWS: u8 = 3;
const MAX_INSTANCES: usize = 3;
const MAX_VERSION: u8 = 6;
const KEKS: usize = 3;

/// How long an instance may keep encrypting under a version after another
/// instance changed the keyring: its snapshot refresh interval.
pub const SNAPSHOT_BOUND: Duration = Duration::from_secs(60);
/// Lease time-to-live of every model rotation.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// The case's start time.
const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);
const DAY: u64 = 24 * 60 * 60;
/// Quarantine of the `token` keyrings (the `database` ones have none: retire
/// destroys at once there).
const QUARANTINE: Duration = Duration::from_secs(30 * DAY);

/// Clock jumps: seconds to months.
const JUMPS: [u64; 10] = [1, 30, 120, 3600, DAY, 2 * DAY, 6 * DAY, 12 * DAY, 45 * DAY, 120 * DAY];

fn op_strategy() -> impl Strategy<Value = Op> {
    let inst = 0..MAX_INSTANCES as u8;
    // Most ops land on two keyrings, so that sequences on one keyring grow long.
    let slot = proptest::sample::select(&[0u8, 0, 0, 0, 1, 2, 2, 2, 3, 4][..]);
    let version = 1..=MAX_VERSION;
    let jump = proptest::sample::select(&JUMPS[..]);
    prop_oneof![
        8 => slot.clone().prop_map(|slot| Op::Create { slot }),
        1 => any::<bool>().prop_map(|sources| Op::Open { sources }),
        10 => (inst.clone(), slot.clone(), 0..ROWS, 0..4u8)
            .prop_map(|(inst, slot, row, val)| Op::Write { inst, slot, row, val }),
        2 => (inst.clone(), slot.clone(), 0..ROWS).prop_map(|(inst, slot, row)| Op::Read { inst, slot, row }),
        1 => (inst.clone(), slot.clone()).prop_map(|(inst, slot)| Op::AddVersion { inst, slot }),
        4 => (inst.clone(), slot.clone()).prop_map(|(inst, slot)| Op::Rotate { inst, slot }),
        2 => (inst.clone(), slot.clone()).prop_map(|(inst, slot)| Op::Emergency { inst, slot }),
        2 => (inst.clone(), slot.clone(), any::<bool>())
            .prop_map(|(inst, slot, reencrypt)| Op::Rollback { inst, slot, reencrypt }),
        2 => (inst.clone(), slot.clone(), version.clone(), any::<bool>())
            .prop_map(|(inst, slot, version, forced)| Op::Retire { inst, slot, version, forced }),
        1 => (inst.clone(), slot.clone(), version.clone())
            .prop_map(|(inst, slot, version)| Op::DirectRetire { inst, slot, version }),
        1 => (inst.clone(), slot.clone(), version.clone())
            .prop_map(|(inst, slot, version)| Op::RetireNow { inst, slot, version }),
        2 => (inst.clone(), slot.clone(), version.clone())
            .prop_map(|(inst, slot, version)| Op::Enable { inst, slot, version }),
        // Tenant t1's keyrings only: an erasure ends a keyring's story, and
        // t0's keyrings carry the long sequences.
        1 => (inst.clone(), proptest::sample::select(&[1u8, 3][..]), proptest::sample::select(&[false, false, true][..]))
            .prop_map(|(inst, slot, now)| Op::DestroyKeyring { inst, slot, now }),
        1 => (inst.clone(), slot.clone(), version).prop_map(|(inst, slot, version)| Op::DirectActivate {
            inst,
            slot,
            version
        }),
        2 => (inst.clone(), slot.clone()).prop_map(|(inst, slot)| Op::Resume { inst, slot }),
        2 => (inst.clone(), slot.clone(), any::<bool>(), 0..2u8, any::<bool>()).prop_map(
            |(inst, slot, emergency, replaces, written)| Op::Crash { inst, slot, emergency, replaces, written }
        ),
        4 => (inst.clone(), jump.clone()).prop_map(|(inst, advance_secs)| Op::Tick { inst, advance_secs }),
        1 => (inst.clone(), slot).prop_map(|(inst, slot)| Op::RequestEmergency { inst, slot }),
        2 => jump.prop_map(|secs| Op::Advance { secs }),
        1 => inst.prop_map(|inst| Op::RotateKek { inst }),
    ]
}

/// Run `config.cases` random cases against `backend`; on a violation, shrink
/// and panic with the minimal op sequence (ready for [`replay`]).
pub fn run_model(backend: &dyn ModelBackend, config: &ModelConfig) {
    let runtime = runtime();
    let proptest_config = ProptestConfig {
        cases: config.cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_global_rejects: config.cases.saturating_mul(100),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(proptest_config);
    let ops = op_strategy();
    let strategy: BoxedStrategy<Op> = match config.filter.clone() {
        Some(keep) => ops.prop_filter("filtered by the config", move |op| keep(op)).boxed(),
        None => ops.boxed(),
    };
    let sequences = proptest::collection::vec(strategy, 1..=config.max_ops.max(1));
    let result = runner.run(&sequences, |ops| {
        runtime.block_on(run_case(backend, &ops, &config.ignore)).map_err(|v| TestCaseError::fail(v.to_string()))
    });
    print_stats();
    match result {
        Ok(()) => {}
        Err(TestError::Fail(_, ops)) => {
            let (ops, violation) = minimize(&runtime, backend, ops, &config.ignore);
            panic!(
                "the model found a violation.\nminimal sequence ({} ops), replay it with \
                 `keywheel_conformance::model::replay`:\n\n{}\n{violation}",
                ops.len(),
                format_ops(&ops),
            )
        }
        Err(TestError::Abort(why)) => panic!("the model run was aborted: {why}"),
    }
}

/// How often each library call was made and succeeded, over every case of
/// the process (printed by [`run_model`] when `KEYWHEEL_MODEL_STATS` is set).
static STATS: Mutex<BTreeMap<&'static str, (u64, u64)>> = Mutex::new(BTreeMap::new());

fn tally(what: &'static str, ok: bool) {
    let mut stats = STATS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let entry = stats.entry(what).or_default();
    entry.0 += 1;
    entry.1 += u64::from(ok);
}

fn print_stats() {
    if std::env::var_os("KEYWHEEL_MODEL_STATS").is_none() {
        return;
    }
    let stats = STATS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    eprintln!("model: calls (succeeded / made)");
    for (what, (made, ok)) in stats.iter() {
        eprintln!("  {what:<20} {ok:>7} / {made}");
    }
}

/// Shrink further than proptest does: cut after the failing step, then drop
/// single ops while the same invariant still breaks.
fn minimize(
    runtime: &tokio::runtime::Runtime,
    backend: &dyn ModelBackend,
    mut ops: Vec<Op>,
    ignore: &[String],
) -> (Vec<Op>, Violation) {
    let Err(mut violation) = runtime.block_on(run_case(backend, &ops, ignore)) else {
        return (ops, Violation { step: 0, op: None, what: "the failure did not reproduce".into() });
    };
    let kind = |v: &Violation| v.what.split(':').next().unwrap_or_default().to_owned();
    let wanted = kind(&violation);
    ops.truncate(violation.step);
    let mut i = 0;
    while i < ops.len() && ops.len() > 1 {
        let mut fewer = ops.clone();
        fewer.remove(i);
        match runtime.block_on(run_case(backend, &fewer, ignore)) {
            Err(v) if kind(&v) == wanted => {
                fewer.truncate(v.step);
                ops = fewer;
                violation = v;
            }
            _ => i += 1,
        }
    }
    (ops, violation)
}

/// Run one fixed op sequence (a shrunk failure) and panic on a violation.
pub fn replay(backend: &dyn ModelBackend, ops: &[Op]) {
    if let Err(v) = runtime().block_on(run_case(backend, ops, &[])) {
        panic!("{v}\nsequence:\n{}", format_ops(ops));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime for the model")
}

/// The ops as Rust source for a regression test (`use keywheel_conformance::model::Op::*;`).
pub fn format_ops(ops: &[Op]) -> String {
    let mut out = String::from("&[\n");
    for op in ops {
        out.push_str(&format!("    {op:?},\n"));
    }
    out.push(']');
    out
}

/// A broken invariant: the step and what went wrong.
#[derive(Debug, Clone)]
pub struct Violation {
    step: usize,
    op: Option<Op>,
    what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Some(op) => write!(f, "violation after step {} ({op:?}): {}", self.step, self.what),
            None => write!(f, "violation before the first step: {}", self.what),
        }
    }
}

async fn run_case(backend: &dyn ModelBackend, ops: &[Op], ignore: &[String]) -> std::result::Result<(), Violation> {
    let world = backend.world().await;
    let mut case = Case::new(backend, world, ignore).await;
    for (i, op) in ops.iter().enumerate() {
        let applied = case.apply(op).await;
        let checked = match applied {
            Ok(()) => case.check().await,
            Err(e) => Err(e),
        };
        if let Err(what) = checked {
            return Err(Violation { step: i + 1, op: Some(op.clone()), what });
        }
    }
    Ok(())
}

fn slot_id(slot: u8) -> KeyringId {
    let (tenant, purpose) = match slot % SLOTS {
        0 => ("t0", Purpose::Token),
        1 => ("t1", Purpose::Token),
        2 => ("t0", Purpose::Database),
        3 => ("t1", Purpose::Database),
        _ => ("t0", Purpose::Custom("token".into())),
    };
    KeyringId::new(tenant, purpose).expect("model keyring ids are valid")
}

/// The keyring a slot names (slot 4 is slot 0 under another spelling).
fn canonical_slot(slot: u8) -> u8 {
    match slot % SLOTS {
        4 => 0,
        s => s,
    }
}

fn slots_of(ring: u8) -> Vec<u8> {
    if ring == 0 { vec![0, 4] } else { vec![ring] }
}

fn table_of(slot: u8) -> &'static str {
    if matches!(canonical_slot(slot), 0 | 1) { "tokens" } else { "fields" }
}

fn context_of(slot: u8, row: u8) -> Context {
    Context::field(table_of(slot), "secret", &format!("{}", u32::from(slot % SLOTS) * 10 + u32::from(row)))
}

fn plaintext(slot: u8, row: u8, val: u8) -> Vec<u8> {
    format!("slot {slot} row {row} value {val}").into_bytes()
}

fn policy_of(ring: u8) -> Policy {
    if matches!(ring, 0 | 1) {
        Policy {
            interval: Duration::from_secs(10 * DAY),
            grace_period: Duration::from_secs(2 * DAY),
            rollback_window: Duration::from_secs(3600),
            activation_delay: Duration::ZERO,
            after_rotation: AfterRotation::Reencrypt,
            usage_limit: Some(6),
            maintenance_window: None,
            priority: 1,
            quarantine: QUARANTINE,
        }
    } else {
        Policy {
            interval: Duration::from_secs(30 * DAY),
            grace_period: Duration::from_secs(5 * DAY),
            rollback_window: Duration::from_secs(DAY),
            activation_delay: Duration::ZERO,
            after_rotation: AfterRotation::Reencrypt,
            usage_limit: None,
            maintenance_window: None,
            priority: 0,
            quarantine: Duration::ZERO,
        }
    }
}

fn rotate_options() -> RotateOptions {
    RotateOptions {
        batch_size: 2,
        parallel_batches: 1,
        estimate_total: false,
        lease_ttl: LEASE_TTL,
        ..RotateOptions::default()
    }
}

/// Failure injection shared by the sources of one world: after `left`
/// successful `replace` calls, the next one fails (after writing, if `written`).
#[derive(Debug, Default)]
struct CrashPlan {
    armed: AtomicBool,
    left: AtomicU64,
    written: AtomicBool,
}

#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn RecordSource>,
    plan: Arc<CrashPlan>,
}

#[async_trait]
impl RecordSource for Flaky {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn scan(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        self.inner.scan(request).await
    }
    async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
        if self.plan.armed.load(Ordering::SeqCst) {
            if self.plan.left.load(Ordering::SeqCst) == 0 {
                self.plan.armed.store(false, Ordering::SeqCst);
                if self.plan.written.load(Ordering::SeqCst) {
                    self.inner.replace(batch).await?;
                }
                return Err(Error::backend("model crash", "the process was killed", false));
            }
            self.plan.left.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.replace(batch).await
    }
    async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        self.inner.census(keyring).await
    }
}

/// The last lease granted per keyring, as the store answered, and who (which
/// instance incarnation) got it.
#[derive(Debug, Default)]
struct LeaseBook {
    leases: HashMap<String, (Lease, u64, bool)>,
    violations: Vec<String>,
}

/// The store as one instance sees it: every call delegated, lease answers
/// recorded in the shared [`LeaseBook`].
#[derive(Debug)]
struct Watched {
    inner: Arc<dyn KeyStore>,
    who: u64,
    book: Arc<Mutex<LeaseBook>>,
}

#[async_trait]
impl KeyStore for Watched {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        self.inner.create_keyring(record).await
    }
    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        self.inner.load_keyring(id).await
    }
    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.inner.list_keyrings().await
    }
    async fn update_keyring(&self, id: &KeyringId, g: u64, changes: &[KeyringChange]) -> Result<KeyringRecord> {
        self.inner.update_keyring(id, g, changes).await
    }
    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let lease = self.inner.acquire_lease(id, holder, ttl, now).await?;
        let mut book = self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = id.canonical();
        if let Some((held, who, released)) = book.leases.get(&key)
            && !*released
            && *who != self.who
            && held.expires_at > now
        {
            let msg = format!(
                "I4: instance #{} was granted the lease of {key} (holder {:?}, token {}) while instance #{who} \
                 held it live (holder {:?}, token {}, until {})",
                self.who, lease.holder, lease.token, held.holder, held.token, held.expires_at
            );
            book.violations.push(msg);
        }
        book.leases.insert(key, (lease.clone(), self.who, false));
        Ok(lease)
    }
    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        self.inner.load_lease(id).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let renewed = self.inner.renew_lease(lease, ttl, now).await?;
        let mut book = self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = book.leases.get_mut(&lease.keyring.canonical())
            && entry.0.token == renewed.token
        {
            entry.0 = renewed.clone();
        }
        Ok(renewed)
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.inner.release_lease(lease).await?;
        let mut book = self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = book.leases.get_mut(&lease.keyring.canonical())
            && entry.0.token == lease.token
        {
            entry.2 = true;
        }
        Ok(())
    }
    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        self.inner.save_job(job, lease).await
    }
    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        self.inner.load_job(id).await
    }
    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        self.inner.list_jobs(keyring).await
    }
    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        self.inner.save_policy(keyring, policy).await
    }
    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        self.inner.load_policy(keyring).await
    }
}

/// One running `Keywheel` (a process) with its rotator and scheduler.
struct Instance {
    who: u64,
    kw: Keywheel,
    rotator: Rotator,
    scheduler: Scheduler,
    sources: bool,
    kek: usize,
}

/// One row of the application's tables, as the model knows it.
#[derive(Debug, Clone)]
struct Row {
    cursor: keywheel_core::Cursor,
    /// The last plaintext written, or `None` once knowingly sacrificed.
    expected: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    Created,
    Rotation,
    Rollback,
}

#[derive(Debug, Clone, Copy)]
struct Activation {
    version: KeyVersion,
    prev: Option<KeyVersion>,
    kind: ActKind,
    at: Timestamp,
}

/// What the model knows of one keyring (slots 0..=3; slot 4 is slot 0).
#[derive(Debug, Clone)]
struct Ring {
    /// The slot it was created through (its id in the store).
    created_as: u8,
    last: Option<KeyringRecord>,
    compromised: BTreeMap<KeyVersion, Timestamp>,
    last_activation: Option<Activation>,
    encryptions: BTreeMap<KeyVersion, u64>,
    forced: BTreeSet<KeyVersion>,
    /// When the model erased the keyring (every version forced).
    erased_at: Option<Timestamp>,
}

struct Case<'a> {
    backend: &'a dyn ModelBackend,
    world: ModelWorld,
    clock: ManualClock,
    keks: Vec<Arc<dyn KeyEncryptionKey>>,
    kek: usize,
    book: Arc<Mutex<LeaseBook>>,
    plan: Arc<CrashPlan>,
    instances: Vec<Instance>,
    next_who: u64,
    checker: Keywheel,
    census: Rotator,
    rings: BTreeMap<u8, Ring>,
    rows: BTreeMap<(u8, u8), Row>,
    /// Set while an op re-activates a Deprecated version (for I7 bookkeeping).
    act_kind: ActKind,
    ignore: Vec<String>,
}

fn is_lease_refusal(e: &Error) -> bool {
    matches!(e, Error::RotationInProgress { .. } | Error::LeaseHeld { .. })
}

impl<'a> Case<'a> {
    async fn new(backend: &'a dyn ModelBackend, world: ModelWorld, ignore: &[String]) -> Case<'a> {
        let clock = ManualClock::new(T0);
        let keks: Vec<Arc<dyn KeyEncryptionKey>> = (0..KEKS)
            .map(|i| {
                let kek = LocalKek::from_bytes(&[i as u8 + 1; 32]).with_id(format!("model-kek-{i}"));
                Arc::new(kek) as Arc<dyn KeyEncryptionKey>
            })
            .collect();
        let checker = Keywheel::builder()
            .store(Arc::clone(&world.store))
            .kek(Arc::new(KekRing::new(Arc::clone(&keks[0]), keks[1..].to_vec())))
            .audit(Arc::clone(&world.audit))
            .clock(Arc::new(clock.clone()))
            .actor("model-checker")
            .refresh_interval(Duration::ZERO)
            .reload_cooldown(Duration::ZERO)
            .build()
            .expect("the checker instance");
        let census = Rotator::new(checker.clone())
            .expect("a rotator")
            .source(world.tokens.source())
            .source(world.fields.source());
        let mut case = Case {
            backend,
            world,
            clock,
            keks,
            kek: 0,
            book: Arc::default(),
            plan: Arc::default(),
            instances: Vec::new(),
            next_who: 0,
            checker,
            census,
            rings: BTreeMap::new(),
            rows: BTreeMap::new(),
            act_kind: ActKind::Rotation,
            ignore: ignore.to_vec(),
        };
        let first = case.open_instance(true).await;
        case.instances.push(first);
        case
    }

    /// A new instance on the shared store: the one place that builds a
    /// `Keywheel`, its `Rotator` and its `Scheduler`.
    async fn open_instance(&mut self, sources: bool) -> Instance {
        let who = self.next_who;
        self.next_who += 1;
        let store = self.backend.reopen(&self.world).await;
        let watched = Watched { inner: store, who, book: Arc::clone(&self.book) };
        let others: Vec<_> =
            self.keks.iter().enumerate().filter(|(i, _)| *i != self.kek).map(|(_, k)| Arc::clone(k)).collect();
        let kw = Keywheel::builder()
            .store(Arc::new(watched))
            .kek(Arc::new(KekRing::new(Arc::clone(&self.keks[self.kek]), others)))
            .audit(Arc::clone(&self.world.audit))
            .clock(Arc::new(self.clock.clone()))
            .actor(format!("app-{who}"))
            .refresh_interval(SNAPSHOT_BOUND)
            .reload_cooldown(Duration::ZERO)
            .build()
            .expect("an instance");
        // Every process of the deployment names its lease holder the same
        // way the CLI does (its configured actor, here the service name).
        let mut rotator = Rotator::new(kw.clone()).expect("a rotator").holder("app");
        if sources {
            for fixture in [&self.world.tokens, &self.world.fields] {
                rotator = rotator.source(Arc::new(Flaky { inner: fixture.source(), plan: Arc::clone(&self.plan) }));
            }
        }
        let config = SchedulerConfig { rotate: rotate_options(), ..SchedulerConfig::default() };
        let scheduler = Scheduler::new(rotator.clone(), config);
        Instance { who, kw, rotator, scheduler, sources, kek: self.kek }
    }

    fn inst(&self, i: u8) -> usize {
        usize::from(i) % self.instances.len()
    }

    /// Instance `i`'s rotator, `Keywheel` and id.
    fn handles(&self, i: u8) -> (Rotator, Keywheel, u64) {
        let instance = &self.instances[self.inst(i)];
        (instance.rotator.clone(), instance.kw.clone(), instance.who)
    }

    fn now(&self) -> Timestamp {
        keywheel_core::Clock::now(&self.clock)
    }

    fn version(v: u8) -> KeyVersion {
        KeyVersion::new(u32::from(v.max(1))).expect("nonzero")
    }

    /// A violation, unless its invariant is ignored by the config.
    fn flag(&self, what: String) -> std::result::Result<(), String> {
        if self.ignore.iter().any(|tag| what.starts_with(&format!("{tag}:"))) { Ok(()) } else { Err(what) }
    }

    /// The id a keyring slot's ring was created with (the store's id), if created.
    fn store_id(&self, slot: u8) -> Option<KeyringId> {
        self.rings.get(&canonical_slot(slot)).map(|r| slot_id(r.created_as))
    }

    async fn stored_policy(&self, kw: &Keywheel, id: &KeyringId) -> Policy {
        kw.policy(id).await.unwrap_or_else(|_| policy_of(0))
    }

    /// The lease book's entry for the keyring of `slot` before a call.
    fn leases_before(&self, slot: u8) -> Option<(Lease, u64, bool)> {
        let book = self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        book.leases.get(&slot_id(slot).canonical()).cloned()
    }

    /// I4, second half: a call by instance `who` refused because a rotation is
    /// in progress (a live lease or an unfinished job) changes nothing: a live
    /// lease of another instance stays exactly as it was (holder, token,
    /// expiry), and a lease the call took over to find that out is given back.
    fn refused_changes_nothing<T>(
        &self,
        slot: u8,
        who: u64,
        before: Option<(Lease, u64, bool)>,
        result: &Result<T>,
    ) -> std::result::Result<(), String> {
        let Err(e) = result else { return Ok(()) };
        if !is_lease_refusal(e) {
            return Ok(());
        }
        let book = self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let after = book.leases.get(&slot_id(slot).canonical()).cloned();
        if after == before {
            return Ok(());
        }
        let live_other = before.as_ref().is_some_and(|b| b.1 != who && !b.2 && b.0.expires_at > self.now());
        if live_other {
            return self.flag(format!(
                "I4: a refused call ({e}) changed the live lease of another instance {before:?} into {after:?}"
            ));
        }
        if after.as_ref().is_some_and(|a| !a.2) {
            return self
                .flag(format!("I4: a refused call ({e}) took the lease {before:?} over and kept it: {after:?}"));
        }
        Ok(())
    }

    /// Apply one op through the public API. Refusals are fine; only results the
    /// model can prove wrong are returned as violations.
    async fn apply(&mut self, op: &Op) -> std::result::Result<(), String> {
        self.act_kind = ActKind::Rotation;
        match *op {
            Op::Create { slot } => {
                let slot = slot % SLOTS;
                let ring = canonical_slot(slot);
                let id = slot_id(slot);
                if slot == 4 && slot_id(4) != slot_id(0) {
                    self.flag(
                        "I6: KeyringId(t0, Custom(\"token\")) != KeyringId(t0, Token) although both are t0/token"
                            .into(),
                    )?;
                }
                let kw = self.instances[0].kw.clone();
                let created = kw.create_keyring(&id, Algorithm::Aes256Gcm).await;
                tally("create", created.is_ok());
                match (created, self.rings.contains_key(&ring)) {
                    (Ok(_), true) => {
                        self.flag(format!("I6: created {id} although {} exists", slot_id(ring)))?;
                    }
                    (Ok(_), false) => {
                        kw.set_policy(&id, &policy_of(ring)).await.map_err(|e| format!("set_policy: {e}"))?;
                        let record = kw.record(&id).await.map_err(|e| format!("record: {e}"))?;
                        let at = record.versions[0].activated_at.unwrap_or(T0);
                        self.rings.insert(
                            ring,
                            Ring {
                                created_as: slot,
                                last: Some(record),
                                compromised: BTreeMap::new(),
                                last_activation: Some(Activation {
                                    version: KeyVersion::FIRST,
                                    prev: None,
                                    kind: ActKind::Created,
                                    at,
                                }),
                                encryptions: BTreeMap::new(),
                                forced: BTreeSet::new(),
                                erased_at: None,
                            },
                        );
                    }
                    (Err(_), _) => {}
                }
            }
            Op::Open { sources } => {
                if self.instances.len() < MAX_INSTANCES {
                    let instance = self.open_instance(sources).await;
                    self.instances.push(instance);
                }
            }
            Op::Write { inst, slot, row, val } => {
                let (slot, row) = (slot % SLOTS, row % ROWS);
                let ring = canonical_slot(slot);
                if slot == 4 && slot_id(4) != slot_id(0) && self.rings.contains_key(&0) {
                    self.flag(
                        "I6: KeyringId(t0, Custom(\"token\")) != KeyringId(t0, Token) although both are t0/token"
                            .into(),
                    )?;
                }
                let kw = self.instances[self.inst(inst)].kw.clone();
                let id = slot_id(slot);
                let context = context_of(slot, row);
                let text = plaintext(slot, row, val);
                let encrypted = kw.encrypt(&id, &text, &context).await;
                tally("write", encrypted.is_ok());
                let erased = self.rings.get(&ring).and_then(|r| r.erased_at);
                let value = match encrypted {
                    Ok(value) => value,
                    Err(Error::KeyringErased { .. }) if erased.is_some() => return Ok(()),
                    Err(e) if self.rings.contains_key(&ring) => {
                        return Err(format!("a write to the existing keyring {id} failed: {e}"));
                    }
                    Err(_) => return Ok(()),
                };
                let now = self.now();
                let Some(model) = self.rings.get_mut(&ring) else {
                    return Err(format!("a write to {id}, which was never created, succeeded"));
                };
                let version = version_of(&value).map_err(|e| format!("a fresh value does not parse: {e}"))?;
                *model.encryptions.entry(version).or_default() += 1;
                if let Some(at) = erased
                    && now >= at.plus(SNAPSHOT_BOUND)
                {
                    return Err(format!(
                        "erasure: {id}, erased at {at}, encrypted a value after the snapshot bound ({SNAPSHOT_BOUND:?})"
                    ));
                }
                let (forced, created_as) = (model.forced.contains(&version), model.created_as);
                if let Some(since) = model.compromised.get(&version).copied()
                    && now >= since.plus(SNAPSHOT_BOUND)
                {
                    self.flag(format!(
                        "I3: {id} was written under {version}, flagged compromised at {since}, after the \
                         snapshot bound ({SNAPSHOT_BOUND:?}) passed"
                    ))?;
                }
                let fixture = if table_of(slot) == "tokens" { &self.world.tokens } else { &self.world.fields };
                let mut expected = Some(text);
                // A stale instance may write under a version forced out meanwhile:
                // that value is knowingly sacrificed with the version.
                if forced {
                    let record = self.checker.record(&slot_id(created_as)).await;
                    if record.is_ok_and(|r| r.version(version).is_some_and(|v| !v.state.can_decrypt())) {
                        expected = None;
                    }
                }
                match self.rows.get_mut(&(slot, row)) {
                    Some(r) => {
                        fixture.app_write(&r.cursor, value).await;
                        r.expected = expected;
                    }
                    None => {
                        let cursor = fixture.insert(&id, &context, value).await;
                        self.rows.insert((slot, row), Row { cursor, expected });
                    }
                }
            }
            Op::Read { inst, slot, row } => {
                let (slot, row) = (slot % SLOTS, row % ROWS);
                let Some(r) = self.rows.get(&(slot, row)).cloned() else { return Ok(()) };
                let Some(expected) = r.expected else { return Ok(()) };
                let fixture = if table_of(slot) == "tokens" { &self.world.tokens } else { &self.world.fields };
                let Some(stored) = fixture.get(&r.cursor).await else {
                    return Err(format!("row {slot}/{row} disappeared"));
                };
                let kw = self.instances[self.inst(inst)].kw.clone();
                match kw.decrypt(&slot_id(slot), &stored, &context_of(slot, row)).await {
                    Ok(p) if p[..] == expected[..] => {}
                    Ok(_) => self.flag(format!("read: row {slot}/{row} returned another plaintext"))?,
                    Err(e) => self.flag(format!("read: row {slot}/{row} failed: {e}"))?,
                }
            }
            Op::AddVersion { inst, slot } => {
                let kw = self.instances[self.inst(inst)].kw.clone();
                tally("add_version", kw.add_version(&slot_id(slot)).await.is_ok());
            }
            Op::Rotate { inst, slot } => {
                let (rotator, kw, who) = self.handles(inst);
                let id = slot_id(slot);
                let policy = self.stored_policy(&kw, &id).await;
                let before = self.leases_before(slot);
                let result = rotator.rotate(&id, &policy, &rotate_options()).await;
                tally("rotate", result.is_ok());
                self.refused_changes_nothing(slot, who, before, &result)?;
            }
            Op::Emergency { inst, slot } => {
                let (rotator, _, who) = self.handles(inst);
                let before = self.leases_before(slot);
                let result = rotator.emergency(&slot_id(slot), "model: key leaked", &rotate_options()).await;
                tally("emergency", result.is_ok());
                self.refused_changes_nothing(slot, who, before, &result)?;
            }
            Op::Rollback { inst, slot, reencrypt } => {
                let (rotator, kw, who) = self.handles(inst);
                let id = slot_id(slot);
                let policy = self.stored_policy(&kw, &id).await;
                let before = self.leases_before(slot);
                self.act_kind = ActKind::Rollback;
                let result = rotator.rollback(&id, &policy, Some("model"), reencrypt, &rotate_options()).await;
                tally(if reencrypt { "rollback+reencrypt" } else { "rollback" }, result.is_ok());
                self.refused_changes_nothing(slot, who, before, &result)?;
                if let Ok(report) = &result {
                    self.check_rollback(slot, report.from, report.to, &policy)?;
                } else if let Err(e) = &result
                    && !matches!(e, Error::RotationInProgress { .. })
                {
                    // Refused before anything changed, or failed in the re-encryption
                    // (the rollback itself happened): the observation decides.
                    self.observe_rollback(slot, &policy).await?;
                }
            }
            Op::Retire { inst, slot, version, forced } => {
                let (rotator, kw, who) = self.handles(inst);
                let id = slot_id(slot);
                let policy = self.stored_policy(&kw, &id).await;
                let before = self.leases_before(slot);
                let v = Self::version(version);
                let force = forced.then_some("model: knowingly sacrificed");
                let saved = if forced { self.sacrifice(slot, v).await } else { Vec::new() };
                let result = rotator.retire(&id, v, &policy, force).await;
                tally(if forced { "retire forced" } else { "retire" }, result.is_ok());
                self.refused_changes_nothing(slot, who, before, &result)?;
                if forced && result.is_err() {
                    self.unsacrifice(slot, v, saved).await;
                }
            }
            Op::DirectRetire { inst, slot, version } => {
                let kw = self.instances[self.inst(inst)].kw.clone();
                let v = Self::version(version);
                // `Keywheel::retire_forced` is the unguarded call: a forced
                // retirement with a reason, so what it destroys is knowingly sacrificed.
                let saved = self.sacrifice(slot, v).await;
                let result = kw.retire_forced(&slot_id(slot), v, "model: direct retire").await;
                tally("keywheel.retire_forced", result.is_ok());
                if result.is_err() {
                    self.unsacrifice(slot, v, saved).await;
                }
            }
            Op::RetireNow { inst, slot, version } => {
                let (rotator, kw, who) = self.handles(inst);
                let id = slot_id(slot);
                let policy = self.stored_policy(&kw, &id).await;
                let before = self.leases_before(slot);
                let result =
                    rotator.retire_with(&id, Self::version(version), &policy, &RetireOptions::new().now()).await;
                tally("retire now", result.is_ok());
                self.refused_changes_nothing(slot, who, before, &result)?;
                if let Ok(record) = &result
                    && record.version(Self::version(version)).is_some_and(|v| v.state != KeyState::Retired)
                {
                    return Err(format!("retire now: {id} {} was not destroyed", Self::version(version)));
                }
            }
            Op::Enable { inst, slot, version } => {
                let kw = self.instances[self.inst(inst)].kw.clone();
                // Aim at a Disabled version when a keyring has one, this
                // slot's first (random picks rarely hit one); otherwise the
                // refusal is exercised.
                let mut id = slot_id(slot);
                for candidate in std::iter::once(slot).chain(0..SLOTS) {
                    let cid = slot_id(candidate);
                    let has = self
                        .checker
                        .record(&cid)
                        .await
                        .is_ok_and(|r| r.versions.iter().any(|x| x.state == KeyState::Disabled));
                    if has {
                        id = cid;
                        break;
                    }
                }
                let record = self.checker.record(&id).await.ok();
                let disabled: Vec<KeyVersion> = record
                    .iter()
                    .flat_map(|r| r.versions.iter().filter(|x| x.state == KeyState::Disabled).map(|x| x.version))
                    .collect();
                let v = match disabled.len() {
                    0 => Self::version(version),
                    n => disabled[usize::from(version) % n],
                };
                let before = record.and_then(|r| r.version(v).cloned());
                let result = kw.enable(&id, v, Some("model: still needed")).await;
                tally("enable", result.is_ok());
                match (&result, before) {
                    (Ok(_), Some(b)) => {
                        if b.state != KeyState::Disabled {
                            self.flag(format!("enable: {id} {v} was re-enabled from {}", b.state))?;
                        }
                        if b.compromised {
                            self.flag(format!("I2: {id} {v}, flagged compromised, was re-enabled"))?;
                        }
                        if b.destroy_after.is_none_or(|end| self.now() >= end) {
                            self.flag(format!(
                                "enable: {id} {v} was re-enabled at {} although its quarantine ended at {:?}",
                                self.now(),
                                b.destroy_after
                            ))?;
                        }
                    }
                    (Ok(_), None) => self.flag(format!("enable: {id} {v}, which does not exist, was re-enabled"))?,
                    (Err(Error::QuarantineOver { .. }), Some(b))
                        if b.destroy_after.is_some_and(|end| self.now() < end) =>
                    {
                        self.flag(format!("enable: {id} {v} refused inside its quarantine ({:?})", b.destroy_after))?;
                    }
                    (Err(_), _) => {}
                }
            }
            Op::DestroyKeyring { inst, slot, now } => {
                let kw = self.instances[self.inst(inst)].kw.clone();
                let id = slot_id(slot);
                let ring = canonical_slot(slot);
                // Every value of the keyring is knowingly sacrificed.
                let mut saved = Vec::new();
                for v in 1..=MAX_VERSION {
                    saved.push((Self::version(v), self.sacrifice(slot, Self::version(v)).await));
                }
                let result = kw.destroy_keyring(&id, "model: erasure request", now).await;
                tally(if now { "destroy keyring now" } else { "destroy keyring" }, result.is_ok());
                match &result {
                    Ok(record) => {
                        if record.active_version().is_some() || record.erased_at.is_none() {
                            return Err(format!("erasure: {id} still has an Active version after its erasure"));
                        }
                        if let Some(model) = self.rings.get_mut(&ring) {
                            model.erased_at.get_or_insert(record.erased_at.unwrap_or(T0));
                        }
                    }
                    Err(_) => {
                        for (v, rows) in saved {
                            self.unsacrifice(slot, v, rows).await;
                        }
                    }
                }
            }
            Op::DirectActivate { inst, slot, version } => {
                let kw = self.instances[self.inst(inst)].kw.clone();
                let id = slot_id(slot);
                let v = Self::version(version);
                let state = self.checker.record(&id).await.ok().and_then(|r| r.version(v).map(|x| x.state));
                if state == Some(KeyState::Deprecated) {
                    self.act_kind = ActKind::Rollback;
                }
                let pre_active = self.checker.record(&id).await.ok().and_then(|r| r.active_version());
                let activated = kw.activate(&id, v).await.is_ok();
                tally("keywheel.activate", activated);
                if activated
                    && state == Some(KeyState::Deprecated)
                    && let Some(from) = pre_active
                    && from != v
                {
                    let policy = self.stored_policy(&kw, &id).await;
                    self.check_rollback(slot, from, v, &policy)?;
                }
            }
            Op::Resume { inst, slot } => {
                let (rotator, _, who) = self.handles(inst);
                let before = self.leases_before(slot);
                let result = rotator.resume(&slot_id(slot), &rotate_options()).await;
                tally("resume", result.as_ref().is_ok_and(Option::is_some));
                self.refused_changes_nothing(slot, who, before, &result)?;
            }
            Op::Crash { inst, slot, emergency, replaces, written } => {
                let (rotator, kw, who) = self.handles(inst);
                let id = slot_id(slot);
                let policy = self.stored_policy(&kw, &id).await;
                let before = self.leases_before(slot);
                self.plan.left.store(u64::from(replaces), Ordering::SeqCst);
                self.plan.written.store(written, Ordering::SeqCst);
                self.plan.armed.store(true, Ordering::SeqCst);
                let opts = RotateOptions { batch_size: 1, ..rotate_options() };
                let result = if emergency {
                    rotator.emergency(&id, "model: key leaked", &opts).await
                } else {
                    rotator.rotate(&id, &policy, &opts).await
                };
                let crashed = !self.plan.armed.swap(false, Ordering::SeqCst);
                tally("crash", crashed);
                self.refused_changes_nothing(slot, who, before, &result)?;
                if crashed {
                    self.restart(self.inst(inst)).await;
                }
            }
            Op::Tick { inst, advance_secs } => {
                self.clock.advance(Duration::from_secs(advance_secs));
                let i = self.inst(inst);
                if let Ok(report) = self.instances[i].scheduler.tick().await {
                    tally("tick rotation", !report.rotations.is_empty());
                    tally("tick retirement", !report.retired.is_empty());
                }
            }
            Op::RequestEmergency { inst, slot } => {
                let i = self.inst(inst);
                let _ = self.instances[i].scheduler.request_emergency(&slot_id(slot), "model: key leaked");
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(secs)),
            Op::RotateKek { inst } => {
                if self.kek + 1 < KEKS {
                    let i = self.inst(inst);
                    let rotator = self.instances[i].rotator.clone();
                    let rotated = rotator.rotate_kek(Arc::clone(&self.keks[self.kek + 1])).await.is_ok();
                    tally("rotate_kek", rotated);
                    if rotated {
                        self.kek += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The process of instance `i` died: its unflushed usage is lost with it
    /// (the model forgets those encryptions), and it restarts afresh.
    async fn restart(&mut self, i: usize) {
        let old = &self.instances[i];
        for (&ring, model) in &mut self.rings {
            for slot in slots_of(ring) {
                for (v, n) in model.encryptions.iter_mut() {
                    *n = n.saturating_sub(old.kw.unflushed_usage(&slot_id(slot), *v));
                }
            }
        }
        let sources = old.sources;
        let kek = self.kek;
        self.kek = old.kek;
        let fresh = self.open_instance(sources).await;
        self.kek = kek;
        self.instances[i] = fresh;
    }

    /// Values of the ring of `slot` now on `v` are knowingly sacrificed;
    /// returns their expectations for [`unsacrifice`](Self::unsacrifice).
    async fn sacrifice(&mut self, slot: u8, v: KeyVersion) -> Vec<((u8, u8), Vec<u8>)> {
        let ring = canonical_slot(slot);
        if let Some(model) = self.rings.get_mut(&ring) {
            model.forced.insert(v);
        }
        let mut saved = Vec::new();
        for slot in slots_of(ring) {
            for row in 0..ROWS {
                let Some(r) = self.rows.get(&(slot, row)).cloned() else { continue };
                let fixture = if table_of(slot) == "tokens" { &self.world.tokens } else { &self.world.fields };
                let Some(stored) = fixture.get(&r.cursor).await else { continue };
                if version_of(&stored) != Ok(v) {
                    continue;
                }
                let entry = self.rows.get_mut(&(slot, row)).expect("present");
                if let Some(expected) = entry.expected.take() {
                    saved.push(((slot, row), expected));
                }
            }
        }
        saved
    }

    /// The forced retirement did not happen: nothing was sacrificed after all
    /// (unless the version is Disabled or Retired anyway).
    async fn unsacrifice(&mut self, slot: u8, v: KeyVersion, saved: Vec<((u8, u8), Vec<u8>)>) {
        let ring = canonical_slot(slot);
        let retired = match self.store_id(slot) {
            Some(id) => {
                self.checker.record(&id).await.is_ok_and(|r| r.version(v).is_some_and(|x| !x.state.can_decrypt()))
            }
            None => false,
        };
        if retired {
            return;
        }
        if let Some(model) = self.rings.get_mut(&ring) {
            model.forced.remove(&v);
        }
        for (key, expected) in saved {
            if let Some(row) = self.rows.get_mut(&key) {
                row.expected = Some(expected);
            }
        }
    }

    /// I7 for a successful rollback (or re-activation of a Deprecated version)
    /// `from` → `to`, against the model's last activation of the keyring.
    fn check_rollback(
        &self,
        slot: u8,
        from: KeyVersion,
        to: KeyVersion,
        policy: &Policy,
    ) -> std::result::Result<(), String> {
        let ring = canonical_slot(slot);
        let Some(last) = self.rings.get(&ring).and_then(|r| r.last_activation) else {
            return self.flag(format!("I7: rolled back {from} → {to} on a keyring the model never saw activated"));
        };
        if last.kind == ActKind::Rollback {
            self.flag(format!(
                "I7: a second rollback in a row toggled {from} → {to} (the last activation was the rollback \
                 {:?} → {})",
                last.prev, last.version
            ))?;
        }
        if last.kind == ActKind::Created {
            self.flag(format!("I7: rolled back {from} → {to} although no rotation happened since creation"))?;
        }
        if last.version != from || last.prev != Some(to) {
            self.flag(format!(
                "I7: rolled back {from} → {to}, but the most recent rotation was {:?} → {}",
                last.prev, last.version
            ))?;
        }
        let closes = last.at.plus(policy.rollback_window);
        if self.now() > closes {
            self.flag(format!("I7: rolled back {from} → {to} after the rollback window closed at {closes}"))?;
        }
        Ok(())
    }

    /// After a failed rollback call, whether the active version moved anyway.
    async fn observe_rollback(&self, slot: u8, policy: &Policy) -> std::result::Result<(), String> {
        let ring = canonical_slot(slot);
        let (Some(id), Some(model)) = (self.store_id(slot), self.rings.get(&ring)) else { return Ok(()) };
        let before = model.last.as_ref().and_then(KeyringRecord::active_version);
        let now = self.checker.record(&id).await.ok().and_then(|r| r.active_version());
        if let (Some(from), Some(to)) = (before, now)
            && from != to
        {
            self.check_rollback(slot, from, to, policy)?;
        }
        Ok(())
    }

    /// Every invariant, against the store, the sources and the instances.
    async fn check(&mut self) -> std::result::Result<(), String> {
        let violations =
            std::mem::take(&mut self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).violations);
        for v in violations {
            self.flag(v)?;
        }
        let ids = self.checker.list_keyrings().await.map_err(|e| format!("list_keyrings: {e}"))?;
        let mut canonical: BTreeMap<String, Vec<KeyringId>> = BTreeMap::new();
        for id in ids {
            canonical.entry(id.canonical()).or_default().push(id);
        }
        if let Some((c, dup)) = canonical.iter().find(|(_, ids)| ids.len() > 1) {
            self.flag(format!("I6: the store holds {} keyrings for {c}: {dup:?}", dup.len()))?;
        }
        let census = self.census.census(None).await.map_err(|e| format!("census: {e}"))?;
        let now = self.now();
        let rings: Vec<u8> = self.rings.keys().copied().collect();
        for ring in rings {
            let model = self.rings[&ring].clone();
            let id = slot_id(model.created_as);
            let record = match self.checker.record(&id).await {
                Ok(r) => r,
                Err(e) => return Err(format!("keyring {id} cannot be loaded: {e}")),
            };
            record.validate().map_err(|e| format!("stored keyring {id} is invalid: {e}"))?;
            if record.erased_at.is_none()
                && record.versions.iter().any(|v| v.activated_at.is_some())
                && record.active_version().is_none()
            {
                self.flag(format!("{id} has no Active version"))?;
            }
            if let Some(last) = &model.last {
                if record.generation < last.generation {
                    self.flag(format!("generation of {id} went back: {} → {}", last.generation, record.generation))?;
                }
                // Usage counts are bookkeeping: an update made only of them keeps
                // the generation. Anything else must come with a new one.
                let without_usage = |r: &KeyringRecord| {
                    let mut r = r.clone();
                    r.versions.iter_mut().for_each(|v| v.encryptions = 0);
                    r
                };
                if record.generation == last.generation && without_usage(&record) != without_usage(last) {
                    self.flag(format!("{id} changed without a new generation ({})", record.generation))?;
                }
                for old in &last.versions {
                    let new = record.version(old.version);
                    if new.is_none() {
                        self.flag(format!("{id} lost version {}", old.version))?;
                    }
                }
            }
            // I2: compromised stays compromised and never Active.
            let mut compromised = model.compromised.clone();
            for v in &record.versions {
                if v.compromised {
                    compromised.entry(v.version).or_insert(now);
                }
            }
            for v in compromised.keys() {
                let Some(r) = record.version(*v) else { continue };
                if !r.compromised {
                    self.flag(format!("I2: {id} {v} lost its compromised flag"))?;
                }
                if r.state == KeyState::Active {
                    self.flag(format!("I2: {id} {v}, flagged compromised, is Active"))?;
                }
            }
            // I7 bookkeeping: who activated what.
            let mut last_activation = model.last_activation;
            let before = model.last.as_ref().and_then(KeyringRecord::active_version);
            let active = record.active_version();
            if active != before
                && let Some(a) = active
            {
                let at = record.version(a).and_then(|v| v.activated_at).unwrap_or(now);
                last_activation = Some(Activation { version: a, prev: before, kind: self.act_kind, at });
            }
            // I1: nothing retired while a source value uses it, unless forced.
            // Census maps are ordered by the canonical form: count one spelling.
            let on = |v: KeyVersion| -> u64 { census.count(&id, v) };
            let mut spellings: Vec<KeyringId> = Vec::new();
            for s in slots_of(ring) {
                if !spellings.contains(&slot_id(s)) {
                    spellings.push(slot_id(s));
                }
            }
            for v in record.versions.iter().filter(|v| !v.state.can_decrypt()) {
                let n = on(v.version);
                if n > 0 && !model.forced.contains(&v.version) && model.erased_at.is_none() {
                    self.flag(format!(
                        "I1: {id} {} is {} (decryption refused) while {n} source value(s) use it",
                        v.version, v.state
                    ))?;
                }
            }
            // I5: stored + unflushed ≥ what the model encrypted.
            for (v, n) in &model.encryptions {
                let stored = record.version(*v).map_or(0, |r| r.encryptions);
                let unflushed: u64 = spellings
                    .iter()
                    .map(|sid| self.instances.iter().map(|i| i.kw.unflushed_usage(sid, *v)).sum::<u64>())
                    .sum();
                if stored + unflushed < *n {
                    self.flag(format!(
                        "I5: {id} {v} counts {stored} stored + {unflushed} unflushed encryptions, but the \
                         application made {n}"
                    ))?;
                }
            }
            // I6: the census counts values written through either spelling together.
            if ring == 0 && (0..ROWS).any(|row| self.rows.contains_key(&(4, row))) {
                let rows =
                    (0..ROWS).flat_map(|row| [(0, row), (4, row)]).filter(|key| self.rows.contains_key(key)).count()
                        as u64;
                let counted = census.total(&id);
                if counted != rows {
                    self.flag(format!(
                        "I6: the census counts {counted} values for {id}, but {rows} rows of t0/token exist \
                         (written through Token and Custom(\"token\"))"
                    ))?;
                }
            }
            let entry = self.rings.get_mut(&ring).expect("present");
            entry.compromised = compromised;
            entry.last_activation = last_activation;
            entry.last = Some(record);
        }
        // A Disabled version never decrypts: every stored value on one (the
        // sacrificed ones too) is refused with `KeyDisabled`.
        let mut snapshots: HashMap<u8, Arc<keywheel_core::Keyring>> = HashMap::new();
        for (&(slot, row), r) in &self.rows {
            let ring = canonical_slot(slot);
            let Some(id) = self.store_id(slot) else { continue };
            let fixture = if table_of(slot) == "tokens" { &self.world.tokens } else { &self.world.fields };
            let Some(stored) = fixture.get(&r.cursor).await else { continue };
            let Ok(version) = version_of(&stored) else { continue };
            let snapshot = match snapshots.get(&ring) {
                Some(s) => Arc::clone(s),
                None => {
                    let s = self.checker.refresh(&id).await.map_err(|e| format!("loading {id}: {e}"))?;
                    snapshots.insert(ring, Arc::clone(&s));
                    s
                }
            };
            if snapshot.state_of(version) == Some(KeyState::Disabled) {
                match snapshot.decrypt(&stored, &context_of(slot, row)) {
                    Err(Error::KeyDisabled { version: v }) if v == version => {}
                    other => self.flag(format!(
                        "disabled: row {slot}/{row} of {id} is on Disabled {version}, but decrypting it gave {:?}",
                        other.map(|_| "a plaintext")
                    ))?,
                }
            }
        }
        // Every value the application wrote decrypts to its last write.
        for (&(slot, row), r) in &self.rows {
            let Some(expected) = &r.expected else { continue };
            let ring = canonical_slot(slot);
            let Some(id) = self.store_id(slot) else { continue };
            let snapshot = match snapshots.get(&ring) {
                Some(s) => Arc::clone(s),
                None => {
                    let s = self.checker.refresh(&id).await.map_err(|e| format!("loading {id}: {e}"))?;
                    snapshots.insert(ring, Arc::clone(&s));
                    s
                }
            };
            let fixture = if table_of(slot) == "tokens" { &self.world.tokens } else { &self.world.fields };
            let Some(stored) = fixture.get(&r.cursor).await else {
                return Err(format!("row {slot}/{row} of {id} disappeared"));
            };
            match snapshot.decrypt(&stored, &context_of(slot, row)) {
                Ok(p) if p[..] == expected[..] => {}
                Ok(_) => self.flag(format!("row {slot}/{row} of {id} decrypts to another plaintext"))?,
                Err(e) => {
                    let v = version_of(&stored).map(|v| v.to_string()).unwrap_or_else(|_| "?".into());
                    self.flag(format!("lost write: row {slot}/{row} of {id} (on {v}) no longer decrypts: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

/// The shrunk sequences of the bugs the model found, one per bug; every
/// backend's model test replays each as its own `#[test]`. The comment says
/// which invariant breaks and how (on the code of 2026-12-02).
pub mod regressions {
    use super::Op::{self, *};

    /// I6: `Purpose::Custom("token")` is not the `token` keyring: the ids
    /// differ, so a write through the custom spelling does not find the
    /// keyring (and a second keyring could be created under it).
    pub const CUSTOM_TOKEN_PURPOSE_IS_THE_TOKEN_KEYRING: &[Op] = &[
        Create { slot: 0 },
        Write { inst: 0, slot: 0, row: 0, val: 0 },
        Write { inst: 0, slot: 4, row: 1, val: 1 },
        Create { slot: 4 },
        Rotate { inst: 0, slot: 0 },
    ];

    /// I4: lease holders are names, not instance ids: after instance #0 dies
    /// in a rotation (its lease live for another minute), instance #1 — same
    /// holder name — is granted the lease and resumes the job at once.
    pub const LEASE_HOLDERS_ARE_NOT_SHARED_BY_NAME: &[Op] = &[
        Create { slot: 2 },
        Open { sources: true },
        Open { sources: true },
        Write { inst: 2, slot: 2, row: 0, val: 0 },
        Write { inst: 2, slot: 2, row: 1, val: 0 },
        Crash { inst: 0, slot: 2, emergency: false, replaces: 0, written: false },
        Resume { inst: 1, slot: 2 },
        Advance { secs: 120 },
        Resume { inst: 1, slot: 2 },
    ];

    /// I4: a rotation refused because a crashed job is unfinished takes the
    /// (expired) lease of the crashed instance over and keeps it for a whole
    /// lease time-to-live, so nobody can resume the job meanwhile; a refused
    /// call must change nothing (or give back what it took).
    pub const REFUSED_ROTATION_GIVES_THE_LEASE_BACK: &[Op] = &[
        Create { slot: 2 },
        Open { sources: true },
        Open { sources: true },
        Write { inst: 1, slot: 2, row: 0, val: 0 },
        Write { inst: 1, slot: 2, row: 1, val: 0 },
        Crash { inst: 0, slot: 2, emergency: false, replaces: 0, written: false },
        Advance { secs: 120 },
        Rotate { inst: 2, slot: 2 },
        Resume { inst: 0, slot: 2 },
    ];

    /// I5: a lifecycle change by an instance drops its cached snapshot, and the
    /// encryptions it counted but had not flushed are lost with it.
    pub const USAGE_IS_NOT_UNDER_COUNTED_ACROSS_RELOADS: &[Op] =
        &[Create { slot: 0 }, Write { inst: 0, slot: 0, row: 0, val: 0 }, AddVersion { inst: 0, slot: 0 }];

    /// I1: the scheduler of an instance whose rotator has no source (so no
    /// registered source covers the keyring) rotates, then retires v1 after
    /// the grace period on a zero census while a value still uses it.
    pub const SCHEDULER_WITHOUT_SOURCES_KEEPS_KEYS_IN_USE: &[Op] = &[
        Create { slot: 0 },
        Open { sources: false },
        Write { inst: 0, slot: 0, row: 0, val: 0 },
        Tick { inst: 1, advance_secs: 1_036_800 },
        Tick { inst: 1, advance_secs: 172_800 },
    ];

    /// I1: an emergency rotation by an instance without sources retires the
    /// compromised v1 at once (zero census) while a value still uses it.
    pub const EMERGENCY_WITHOUT_SOURCES_KEEPS_KEYS_IN_USE: &[Op] = &[
        Create { slot: 1 },
        Open { sources: false },
        Write { inst: 0, slot: 1, row: 0, val: 0 },
        Emergency { inst: 1, slot: 1 },
    ];

    /// I1: `Keywheel::retire` destroys v1 while a value uses it (no census,
    /// not forced).
    pub const KEYWHEEL_RETIRE_KEEPS_KEYS_IN_USE: &[Op] = &[
        Create { slot: 0 },
        Open { sources: true },
        Write { inst: 1, slot: 0, row: 0, val: 0 },
        AddVersion { inst: 0, slot: 0 },
        DirectActivate { inst: 0, slot: 0, version: 2 },
        DirectRetire { inst: 0, slot: 0, version: 1 },
    ];

    /// I2: an emergency rotation dies in its re-encryption (so the compromised
    /// v1 still holds a value and stays Deprecated); a rollback then makes it
    /// Active again.
    pub const ROLLBACK_NEVER_REACTIVATES_A_COMPROMISED_VERSION: &[Op] = &[
        Create { slot: 0 },
        Open { sources: true },
        Write { inst: 1, slot: 0, row: 0, val: 0 },
        Crash { inst: 0, slot: 0, emergency: true, replaces: 0, written: false },
        Advance { secs: 120 },
        Rollback { inst: 0, slot: 0, reencrypt: false },
    ];

    /// I2: as above, but `Keywheel::activate` re-activates the compromised v1.
    pub const ACTIVATE_NEVER_REACTIVATES_A_COMPROMISED_VERSION: &[Op] = &[
        Create { slot: 0 },
        Open { sources: true },
        Write { inst: 1, slot: 0, row: 0, val: 0 },
        Crash { inst: 0, slot: 0, emergency: true, replaces: 0, written: false },
        DirectActivate { inst: 0, slot: 0, version: 1 },
    ];

    /// I7: rotate v1 → v2, emergency v2 → v3 (v2 compromised and retired at
    /// once): the rollback skips the retired v2 and re-activates v1, which
    /// the latest rotation did not replace.
    pub const ROLLBACK_ONLY_UNDOES_THE_LATEST_ROTATION: &[Op] = &[
        Create { slot: 0 },
        Rotate { inst: 0, slot: 0 },
        Emergency { inst: 0, slot: 0 },
        Rollback { inst: 0, slot: 0, reencrypt: false },
    ];

    /// I7: the scheduler rotates v1 → v2 (overdue); a rollback re-activates v1;
    /// a second rollback toggles back to v2.
    pub const SECOND_ROLLBACK_DOES_NOT_TOGGLE_BACK: &[Op] = &[
        Create { slot: 0 },
        Tick { inst: 0, advance_secs: 1_036_800 },
        Rollback { inst: 0, slot: 0, reencrypt: false },
        Rollback { inst: 0, slot: 0, reencrypt: false },
    ];

    /// I1 / "every value decrypts to its last write", with I3's window: an
    /// emergency rotation retires the compromised v1 as soon as the census is
    /// zero, while another instance, inside its snapshot bound, may still
    /// encrypt under v1 — its next write is undecryptable at once.
    pub const EMERGENCY_RETIREMENT_WAITS_FOR_STALE_SNAPSHOTS: &[Op] = &[
        Create { slot: 2 },
        Open { sources: true },
        Write { inst: 1, slot: 2, row: 0, val: 0 },
        Emergency { inst: 0, slot: 2 },
        Write { inst: 1, slot: 2, row: 0, val: 1 },
    ];
}

/// One `#[test]` per case of [`regressions`], in a module `model_regressions`,
/// each calling `$replay(ops)`: the function of the calling test file that
/// replays a fixed sequence on its backend (and may skip, as the Postgres one
/// does without a server).
///
/// ```ignore
/// fn regression(ops: &[keywheel_conformance::model::Op]) {
///     keywheel_conformance::model::replay(&MyBackend, ops);
/// }
/// keywheel_conformance::model_regression_tests!(regression);
/// ```
#[macro_export]
macro_rules! model_regression_tests {
    ($replay:ident) => {
        $crate::model_regression_tests!(@cases $replay;
            custom_token_purpose_is_the_token_keyring: CUSTOM_TOKEN_PURPOSE_IS_THE_TOKEN_KEYRING,
            lease_holders_are_not_shared_by_name: LEASE_HOLDERS_ARE_NOT_SHARED_BY_NAME,
            refused_rotation_gives_the_lease_back: REFUSED_ROTATION_GIVES_THE_LEASE_BACK,
            usage_is_not_under_counted_across_reloads: USAGE_IS_NOT_UNDER_COUNTED_ACROSS_RELOADS,
            scheduler_without_sources_keeps_keys_in_use: SCHEDULER_WITHOUT_SOURCES_KEEPS_KEYS_IN_USE,
            emergency_without_sources_keeps_keys_in_use: EMERGENCY_WITHOUT_SOURCES_KEEPS_KEYS_IN_USE,
            keywheel_retire_keeps_keys_in_use: KEYWHEEL_RETIRE_KEEPS_KEYS_IN_USE,
            rollback_never_reactivates_a_compromised_version: ROLLBACK_NEVER_REACTIVATES_A_COMPROMISED_VERSION,
            activate_never_reactivates_a_compromised_version: ACTIVATE_NEVER_REACTIVATES_A_COMPROMISED_VERSION,
            rollback_only_undoes_the_latest_rotation: ROLLBACK_ONLY_UNDOES_THE_LATEST_ROTATION,
            second_rollback_does_not_toggle_back: SECOND_ROLLBACK_DOES_NOT_TOGGLE_BACK,
            emergency_retirement_waits_for_stale_snapshots: EMERGENCY_RETIREMENT_WAITS_FOR_STALE_SNAPSHOTS,
        );
    };
    (@cases $replay:ident; $($name:ident: $case:ident),* $(,)?) => {
        /// The shrunk sequences the model found, replayed (one test each).
        mod model_regressions {
            $(
                #[test]
                fn $name() {
                    super::$replay($crate::model::regressions::$case);
                }
            )*
        }
    };
}
