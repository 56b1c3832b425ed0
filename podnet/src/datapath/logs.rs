//! Log lines from the programs (aya-log), for drops and new translations: off unless asked for.
//! The level is fixed when the programs are loaded (a constant the verifier folds, so logging
//! that is off costs nothing, and the lines it would write are not even in the loaded program);
//! `podnet agent --ebpf-log LEVEL`, or `podnet ebpf-log LEVEL` to a running agent, reloads the
//! programs with another level (swapped into their links, as `up` does) and the agent prints
//! their lines in its own log, prefixed `ebpf:`.

use aya::{Ebpf, maps::ProgramArray, programs::SchedClassifier};
use aya_log::EbpfLogger;
use podnet_common::programs::{LOG_TC, LOGGERS};
use serde::{Deserialize, Serialize};

use super::{DatapathError, PinDir, pins::remove_file};

/// The most detailed log lines the programs write.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum EbpfLog {
    /// None (the default).
    #[default]
    Off,
    Error,
    Warn,
    /// Dropped packets (at most 1000 a second per CPU).
    Info,
    /// Also every new NAT translation.
    Debug,
    Trace,
}

impl EbpfLog {
    /// The value of the programs' `AYA_LOG_LEVEL` (aya-log's levels: 1 error ... 5 trace).
    pub fn global(self) -> u8 {
        self as u8
    }
}

/// With a level, loads the logger the tc programs tail-call (`log_tc`), puts it in its program
/// array, and pins it for [`LogReader`]; without one, unpins it.
pub fn load_loggers(ebpf: &mut Ebpf, pins: &PinDir, log: EbpfLog) -> Result<(), DatapathError> {
    let path = pins.program(LOG_TC);
    remove_file(&path)?;
    let map = ebpf.map_mut(LOGGERS).ok_or(DatapathError::MissingMap { name: LOGGERS })?;
    let mut loggers = ProgramArray::try_from(map).map_err(|source| DatapathError::Loggers { source })?;
    if log == EbpfLog::Off {
        // The programs call no logger now; let an older one go.
        return match loggers.clear_index(&0) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(DatapathError::Loggers { source }),
        };
    }
    let dir = path.parent().expect("programs/ has a parent");
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::Fs {
        op: "create",
        path: dir.to_owned(),
        source,
    })?;
    let program = |name: &'static str, source| DatapathError::Program { name, source };
    let tc: &mut SchedClassifier = ebpf
        .program_mut(LOG_TC)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::MissingProgram { name: LOG_TC })?;
    tc.load().map_err(|e| program(LOG_TC, e))?;
    let tc_fd =
        tc.fd().map_err(|e| program(LOG_TC, e))?.try_clone().map_err(|e| program(LOG_TC, e.into()))?;
    tc.pin(&path).map_err(|source| DatapathError::Pin { path, source })?;
    let map = ebpf.map_mut(LOGGERS).ok_or(DatapathError::MissingMap { name: LOGGERS })?;
    let mut loggers = ProgramArray::try_from(map).map_err(|source| DatapathError::Loggers { source })?;
    loggers.set(0, &tc_fd, 0).map_err(|source| DatapathError::Loggers { source })
}

/// Reads the log lines of the programs loaded last in a node into `tracing`.
pub struct LogReader(EbpfLogger<ToTracing>);

impl LogReader {
    /// Follows the loggers loaded last in `pins` (all programs of one load share one log
    /// buffer).
    pub fn open(pins: &PinDir) -> Result<Self, DatapathError> {
        let path = pins.program(LOG_TC);
        let program = SchedClassifier::from_pin(&path)
            .map_err(|source| DatapathError::PinnedProgram { path: path.clone(), source })?;
        let id = program
            .info()
            .map_err(|source| DatapathError::PinnedProgram { path: path.clone(), source })?
            .id();
        EbpfLogger::init_from_id_with_logger(id, ToTracing)
            .map(Self)
            .map_err(|source| DatapathError::Logs { path, source })
    }

    /// Prints every line written since the last call.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

/// Hands aya-log's records to `tracing`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    /// The level asked for with `--ebpf-log` is what filters the programs' lines: they are
    /// printed at info (debug and trace lines tagged as such), prefixed `ebpf:`. NULs are
    /// dropped: the programs pad names with them to copy strings of one length.
    fn log(&self, record: &log::Record<'_>) {
        let line = record.args().to_string().replace('\0', "");
        match record.level() {
            log::Level::Error => tracing::error!("ebpf: {line}"),
            log::Level::Warn => tracing::warn!("ebpf: {line}"),
            log::Level::Info => tracing::info!("ebpf: {line}"),
            log::Level::Debug => tracing::info!("ebpf: (debug) {line}"),
            log::Level::Trace => tracing::info!("ebpf: (trace) {line}"),
        }
    }

    fn flush(&self) {}
}
