//! The command line: every command, flag and help text (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  error (store, database, master key, configuration)
  2  usage error (unknown command, bad or missing argument)
  3  refused by a safety rule (values still on the version, grace period,
     rollback window, a rotation in progress)
  4  problems found (values that failed to decrypt, values left on old
     versions, a damaged audit log)
  130 interrupted (Ctrl-C); an interrupted rotation continues with `keywheel resume`

The master key comes from KEYWHEEL_MASTER_KEY (base64) or --master-key-file; a
next master key staged for a KEK rotation from KEYWHEEL_MASTER_KEY_NEXT or
--next-master-key-file. Key files must be readable by their owner only. A master
key held in a KMS or HSM is named by --kek (KEYWHEEL_KEK, `kek` in keywheel.toml):
  local:                                   the master key above (default)
  aws-kms://<key id|alias|ARN>?mac-key=<HMAC key>[&region=R][&endpoint=URL]
  pkcs11:token=<label>;object=<label>?module-path=<lib>&pin-source=env:<VAR>
AWS credentials and region come from the standard AWS configuration chain.
Settings may also come from ./keywheel.toml: the store, the keyrings with their
policies ([keyrings.\"*/PURPOSE\"] for every tenant's keyring of a purpose) and the
record sources (Postgres tables) that `rotate` re-encrypts. Every command checks
the whole file first; an error names FILE:LINE (exit code 1).
With --json, times are RFC 3339 and durations are seconds in fields named *_secs.";

/// keywheel: versioned field-level encryption keys — status, rotation,
/// rollback, retirement and the audit trail, from one command.
#[derive(Debug, Parser)]
#[command(name = "keywheel", version, after_help = AFTER_HELP)]
#[command(arg_required_else_help = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Key store: a directory (file store) or a postgres:// URL [default: ./keywheel]
    #[arg(long, global = true, help_heading = "Global options", env = "KEYWHEEL_STORE", value_name = "PATH|URL")]
    pub(crate) store: Option<String>,

    /// File holding the master key (32 raw bytes or base64) instead of KEYWHEEL_MASTER_KEY;
    /// it must be readable by its owner only (chmod 600)
    #[arg(long, global = true, help_heading = "Global options", env = "KEYWHEEL_MASTER_KEY_FILE", value_name = "PATH")]
    pub(crate) master_key_file: Option<PathBuf>,

    /// The key-encryption key: `local:` (the master key, default), `aws-kms://…` or `pkcs11:…`
    /// (see below) [default: `kek` in keywheel.toml, else local:]
    #[arg(long, global = true, help_heading = "Global options", env = "KEYWHEEL_KEK", value_name = "URI")]
    pub(crate) kek: Option<String>,

    /// A second KEK staged for a KEK rotation (a KMS or HSM URI): it also opens the store;
    /// `kek rotate` rewraps to it
    #[arg(long, global = true, help_heading = "Global options", env = "KEYWHEEL_KEK_NEXT", value_name = "URI")]
    pub(crate) next_kek: Option<String>,

    /// CA certificate (PEM) that Postgres servers' TLS certificates must chain to; overrides the
    /// URLs' sslrootcert (use with ?sslmode=verify-full in the store and database URLs)
    #[arg(long, global = true, help_heading = "Global options", env = "KEYWHEEL_CA_FILE", value_name = "PATH")]
    pub(crate) ca_file: Option<PathBuf>,
    /// File holding the next master key, staged for a KEK rotation, instead of
    /// KEYWHEEL_MASTER_KEY_NEXT: it also opens the store; `kek rotate` rewraps to it
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KEYWHEEL_MASTER_KEY_NEXT_FILE",
        value_name = "PATH"
    )]
    pub(crate) next_master_key_file: Option<PathBuf>,

    /// Configuration file [default: ./keywheel.toml when it exists]
    #[arg(long, global = true, help_heading = "Global options", env = "KEYWHEEL_CONFIG", value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of tables
    #[arg(long, global = true, help_heading = "Global options")]
    pub(crate) json: bool,

    /// Name recorded as the actor in the audit trail [default: cli:$USER]
    #[arg(long, global = true, help_heading = "Global options", value_name = "NAME")]
    pub(crate) actor: Option<String>,

    /// Write keywheel's trace spans and events to stderr: a level (`warn`, `info`, `debug`) or
    /// directives (`keywheel_core=debug,warn`); never key bytes, plaintext or row ids
    /// [default: RUST_LOG, else nothing]
    #[arg(long, global = true, help_heading = "Global options", value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new store (and a new master key unless one is given)
    #[command(long_about = "Create a new store. With no master key configured, a new one is generated and \
        written to --master-key-out (default ./master.key, mode 0600; an existing file is never overwritten), \
        or printed with --print-master-key: keep it in a secret manager, never next to the store. \
        On Postgres, creates or upgrades keywheel's tables in the configured schema.")]
    Init(InitArgs),
    /// Create and list keyrings
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Status of every keyring: versions, age, next rotation, last job, warnings
    Status(StatusArgs),
    /// Count stored values per keyring and key version across the record sources
    Census(KeyringFilter),
    /// Rotate a keyring: new version, re-encrypt every record, verify
    #[command(long_about = "Rotate a keyring: store the next key version, activate it, re-encrypt every value in \
        the record sources of keywheel.toml in batches (compare-and-set: concurrent application writes win), \
        verify by census. Start with --dry-run. An interrupted rotation continues with `keywheel resume`.")]
    Rotate(RotateArgs),
    /// Continue an interrupted rotation from its last checkpoint
    Resume(ResumeArgs),
    /// Make the previous version active again (inside the policy's rollback window)
    Rollback(RollbackArgs),
    /// Retire deprecated versions: disable them once nothing uses them, destroy their material after the quarantine
    Retire(RetireArgs),
    /// Check that every value of a keyring is on its active version
    Verify(KeyringFilter),
    /// List the values that failed to decrypt in a keyring's last rotation (they block retirement)
    #[command(long_about = "List the outstanding failures of a keyring: the values its last rotation could not \
        decrypt, by table, column and primary key, with the version their header names and why. They block the \
        retirement of that version. Exits 4 when there are any. Needs no master key.")]
    Failures(FailuresArgs),
    /// Verify and read the audit trail
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the rotation scheduler
    #[command(subcommand)]
    Scheduler(SchedulerCommand),
    /// Key-encryption key (master key) operations
    #[command(subcommand)]
    Kek(KekCommand),
    /// Show what a stored value's header says (no key needed)
    #[command(long_about = "Show what a stored value's header says: form, format, algorithm, key version and \
        lengths. VALUE is the text form (kw:v3:…), hex (\\x6b77… as psql prints bytea, or 0x6b77…), \
        or base64 of the binary form. Needs no store and no key.")]
    Inspect(InspectArgs),
}

/// `init` options.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Write a newly generated master key to this new file (mode 0600) [default: ./master.key]
    #[arg(long, value_name = "PATH")]
    pub(crate) master_key_out: Option<PathBuf>,
    /// Print a newly generated master key on stdout instead of writing it to a file
    #[arg(long, conflicts_with = "master_key_out")]
    pub(crate) print_master_key: bool,
    /// Postgres: run init as the owner role and grant this (existing, non-owner) role what the
    /// application needs — on the audit log only INSERT and SELECT, so it cannot rewrite it
    #[arg(long, value_name = "ROLE")]
    pub(crate) app_role: Option<String>,
}

/// `keyring` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyringCommand {
    /// Create a keyring with its first key version active
    Create(KeyringCreateArgs),
    /// List keyrings with their versions and policies
    List,
    /// Make the store match keywheel.toml: create missing keyrings, update changed policies
    #[command(long_about = "Make the store match the [keyrings] of keywheel.toml: create the keyrings it names \
        that do not exist yet, and store the policy it gives for each (policy changes are audited). A \
        [keyrings.\"*/PURPOSE\"] pattern names every keyring of that purpose in the store and one per tenant \
        found in the tenant_column of the [[sources]]; an exact entry wins over it. Keyrings the file does not \
        name are left alone. With --dry-run, only show what would change.")]
    Apply(ApplyArgs),
    /// Seal keyrings written before keywheel authenticated its records (audited)
    #[command(long_about = "Seal keyring records that carry no seal yet — stores written by a keywheel from \
        before record authentication, which every other command refuses until then — as they stand, under \
        the master key's integrity key. Review the keyring first (its versions are listed, and the audit \
        trail says how they got there): a record whose seal is present but wrong is never resealed. \
        Already sealed keyrings are left alone. On Postgres, run `keywheel init` first to upgrade the schema.")]
    Seal(SealArgs),
    /// Re-enable a disabled key version inside its quarantine (audited)
    #[command(long_about = "Re-enable a key version that `retire` disabled: it decrypts again (Deprecated, \
        never encrypts). Only inside its quarantine, before its key material is destroyed; never for a version \
        flagged compromised. Audited, with --reason when given.")]
    Enable(EnableArgs),
    /// Erase a tenant's keyrings (crypto-shredding): retire every version at once, audited
    #[command(long_about = "Erase keyrings (crypto-shredding, the answer to an erasure request): every version \
        of the keyring, the active one included, is disabled at once (forced, audited with --reason) and \
        nothing encrypts under it again. Give TENANT/PURPOSE for one keyring or TENANT for every keyring of \
        the tenant. The key material is destroyed when the policy's quarantine ends (by the scheduler), or at \
        once with --now; until then a version can be re-enabled with `keyring enable` to read values back.")]
    Destroy(DestroyArgs),
}

/// `keyring enable` options.
#[derive(Debug, Args)]
pub(crate) struct EnableArgs {
    /// Keyring id, `tenant/purpose`
    pub(crate) keyring: String,
    /// The disabled version to re-enable
    #[arg(long, value_name = "N")]
    pub(crate) version: u32,
    /// Why (recorded in the audit trail)
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// `keyring destroy` options.
#[derive(Debug, Args)]
pub(crate) struct DestroyArgs {
    /// `tenant/purpose` for one keyring, or `tenant` for every keyring of the tenant
    #[arg(value_name = "TENANT[/PURPOSE]")]
    pub(crate) target: String,
    /// Why, e.g. the erasure request (recorded in the audit trail)
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: String,
    /// Destroy the key material at once instead of after the quarantine (irreversible)
    #[arg(long)]
    pub(crate) now: bool,
}

/// `keyring seal` options.
#[derive(Debug, Args)]
pub(crate) struct SealArgs {
    /// Keyring id, `tenant/purpose`
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) keyring: Option<String>,
    /// Every keyring of the store that has no seal yet
    #[arg(long)]
    pub(crate) all: bool,
    /// Who reviewed the records and why they are trusted (recorded in the audit trail)
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: String,
}

/// `keyring apply` options.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Show what would change; change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// `keyring create` options.
#[derive(Debug, Args)]
pub(crate) struct KeyringCreateArgs {
    /// Keyring id, `tenant/purpose` (purpose: token, database, file, session, api-signature or a custom name)
    pub(crate) keyring: String,
    /// Algorithm of new versions [default: from keywheel.toml, else aes-256-gcm]
    #[arg(long, value_name = "ALGORITHM")]
    pub(crate) algorithm: Option<String>,
}

/// `status` options.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Also count values per version in the record sources (a census)
    #[arg(long)]
    pub(crate) census: bool,
    /// Only the keyrings keywheel.toml names — its exact entries and, for every
    /// `*/PURPOSE` pattern, each tenant's keyring of that purpose (in the store or
    /// found in a source's tenant_column) — and those of them not created yet
    #[arg(long)]
    pub(crate) all: bool,
}

/// `failures` options.
#[derive(Debug, Args)]
pub(crate) struct FailuresArgs {
    /// Keyring id, `tenant/purpose`
    pub(crate) keyring: String,
}

/// An optional keyring filter.
#[derive(Debug, Args)]
pub(crate) struct KeyringFilter {
    /// Only this keyring (`tenant/purpose`) [default: all]
    pub(crate) keyring: Option<String>,
}

/// `rotate` options.
#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// Keyring id, `tenant/purpose`
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub(crate) keyring: Option<String>,
    /// Rotate every keyring keywheel.toml names (exact entries and `*/PURPOSE`
    /// patterns, tenants found through the sources' tenant_column), one after
    /// another; a failure does not stop the others, the exit code is the worst
    #[arg(long, conflicts_with = "emergency")]
    pub(crate) all: bool,
    /// Read, decrypt and re-encrypt in memory only: write nothing, change no state
    #[arg(long, conflicts_with = "emergency")]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Emergency: the active version is compromised; no activation delay, and it is
    /// retired as soon as no value uses it (needs --reason)
    #[arg(long, requires = "reason")]
    pub(crate) emergency: bool,
    /// Why (recorded in the audit trail); required with --emergency
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// Options of work that walks the record sources.
#[derive(Debug, Args, Clone)]
pub(crate) struct RunArgs {
    /// Values per batch
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) batch_size: u32,
    /// At most this many values per second [default: unlimited]
    #[arg(long, value_name = "VALUES_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: Option<u64>,
    /// Batches re-encrypted concurrently while the next one is read
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) parallel: u32,
    /// How long the keyring's lease lasts without renewal, e.g. 60s, 5m (renewed
    /// at every checkpoint; a crashed run blocks others this long) [default:
    /// `lease_ttl` in keywheel.toml, else 60s]
    #[arg(long, value_name = "DURATION")]
    pub(crate) lease_ttl: Option<String>,
    /// Emergency rotations: how long after the activation to wait before the
    /// final census, so that no application instance still encrypts under the
    /// compromised version (its refresh interval and KEK outage grace plus a
    /// margin) [default: `emergency_settle` in keywheel.toml, else 125s]
    #[arg(long, value_name = "DURATION")]
    pub(crate) settle: Option<String>,
}

/// `resume` options.
#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    /// Keyring id, `tenant/purpose`
    pub(crate) keyring: String,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// `rollback` options.
#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// Keyring id, `tenant/purpose`
    pub(crate) keyring: String,
    /// Why (recorded in the audit trail)
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
    /// Also re-encrypt values back to the re-activated version
    #[arg(long)]
    pub(crate) reencrypt: bool,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// `retire` options.
#[derive(Debug, Args)]
pub(crate) struct RetireArgs {
    /// Keyring id, `tenant/purpose`
    pub(crate) keyring: String,
    /// Only this version [default: every deprecated version, oldest first]
    #[arg(long, value_name = "N")]
    pub(crate) version: Option<u32>,
    /// Retire even with values left or inside the grace period (needs --reason);
    /// values still on the version become unreadable for ever
    #[arg(long, requires = "reason")]
    pub(crate) force: bool,
    /// Why (recorded in the audit trail); required with --force
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
    /// Destroy the key material at once instead of disabling the version for
    /// the policy's quarantine (irreversible); also destroys disabled versions
    #[arg(long)]
    pub(crate) now: bool,
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the whole audit trail: its hash chain, the MAC of every entry (with
    /// the master key; without it only the structure is checked), and an
    /// expected head; prints the head (SEQ:HASH) to anchor elsewhere
    Verify(AuditVerifyArgs),
    /// Show the last events
    Tail(TailArgs),
}

/// `audit verify` options.
#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// A head printed by an earlier `audit verify` and kept elsewhere: a log that
    /// no longer contains it (shorter, or another entry at its place) is damaged (exit 4)
    #[arg(long, value_name = "SEQ:HASH")]
    pub(crate) expect_head: Option<keywheel_core::ChainHead>,
}

/// `audit tail` options.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Number of events
    #[arg(short = 'n', long, default_value_t = 20)]
    pub(crate) lines: usize,
}

/// `scheduler` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SchedulerCommand {
    /// Run the scheduler in the foreground until SIGINT/SIGTERM: rotate what is due,
    /// retire what has passed its grace period
    Run(SchedulerRunArgs),
}

/// `scheduler run` options.
#[derive(Debug, Args)]
pub(crate) struct SchedulerRunArgs {
    /// Seconds between evaluations
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) tick: u64,
    /// Evaluate once and exit
    #[arg(long)]
    pub(crate) once: bool,
    /// Rotations run at the same time
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) max_concurrent: u32,
    /// Do not retire versions automatically
    #[arg(long)]
    pub(crate) no_retire: bool,
}

/// `kek` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KekCommand {
    /// Rewrap every stored key under a new master key (no value is touched)
    #[command(long_about = "Rewrap every stored key version under a new master key; no value is touched. \
        The current master key comes from KEYWHEEL_MASTER_KEY or --master-key-file as usual. The new one is \
        the staged next key (KEYWHEEL_MASTER_KEY_NEXT or --next-master-key-file) — for a rotation without \
        downtime, stage it in every application first — or --new-master-key-file, or is generated and written \
        to --new-master-key-out. Running it again is safe: keys already rewrapped are skipped, and anything \
        written under the old key since is rewrapped. Afterwards only the new master key is needed.")]
    #[command(after_long_help = "Between KEK kinds: `keywheel --kek local: kek rotate --new-kek aws-kms://…`, \
        then `keywheel --kek aws-kms://… kek rotate --new-kek pkcs11:…`; for no downtime, stage the new KEK in \
        every application first (a KekRing of the current and the new KEK), as the manual's section 10 says.")]
    Rotate(KekRotateArgs),
    /// Generate a new master key into a file (mode 0600), to stage as the next master key
    #[command(long_about = "Generate a new random master key and write it to a new file (mode 0600), \
        printing its key check value; nothing else is changed. Stage it as the next master key \
        (KEYWHEEL_MASTER_KEY_NEXT or --next-master-key-file) everywhere before `keywheel kek rotate`.")]
    Generate(KekGenerateArgs),
}

/// `kek rotate` options.
#[derive(Debug, Args)]
pub(crate) struct KekRotateArgs {
    /// The KEK to rewrap to, as a URI (`aws-kms://…`, `pkcs11:…`; `local:` means a new master key
    /// from the options below) [default: the staged --next-kek, else a new master key]
    #[arg(long, value_name = "URI")]
    pub(crate) new_kek: Option<String>,
    /// File holding the new master key (32 raw bytes or base64) [default: the staged next master key]
    #[arg(long, value_name = "PATH", conflicts_with_all = ["new_master_key_out", "print_master_key"])]
    pub(crate) new_master_key_file: Option<PathBuf>,
    /// Generate the new master key and write it to this new file (mode 0600)
    #[arg(long, value_name = "PATH", conflicts_with = "print_master_key")]
    pub(crate) new_master_key_out: Option<PathBuf>,
    /// Generate the new master key and print it on stdout instead of writing it to a file
    #[arg(long)]
    pub(crate) print_master_key: bool,
}

/// `kek generate` options.
#[derive(Debug, Args)]
pub(crate) struct KekGenerateArgs {
    /// The new file to write the master key to (mode 0600)
    #[arg(long, value_name = "PATH", default_value = "./next-master.key", conflicts_with = "print_master_key")]
    pub(crate) out: PathBuf,
    /// Print the master key on stdout instead of writing it to a file
    #[arg(long)]
    pub(crate) print_master_key: bool,
}

/// `inspect` options.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The stored value: text form, hex (\x… or 0x…) or base64 of the binary form
    pub(crate) value: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
