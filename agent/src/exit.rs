//! Exit statuses: the interface of an init container.
//!
//! Values follow BSD `sysexits.h`, so a status means the same thing to this program
//! and to other tools.

use backends::BackendError;

/// Exit status of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every file was written, or the check passed.
    Success = 0,
    /// A check failed, such as a key that does not open the database.
    CheckFailed = 1,
    /// The command line is invalid.
    Usage = 64,
    /// A value failed validation (empty key, bcrypt hash as password, bad base64).
    InvalidValue = 65,
    /// A secret, version or JSON field does not exist.
    NotFound = 66,
    /// The store stayed unreachable until the deadline.
    Unavailable = 69,
    /// A bug: the agent reached a state it should not.
    Internal = 70,
    /// Standard output could not be written.
    OutputFailed = 74,
    /// A target file cannot be written safely.
    CannotWrite = 73,
    /// A file is locked by another process, such as a running Portainer.
    Locked = 75,
    /// The store rejected the agent's identity or denied access.
    Denied = 77,
    /// The configuration is invalid.
    Configuration = 78,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Returns the status with this numeric code, or `Internal` for an unknown one.
    pub fn from_code(code: u8) -> Self {
        const ALL: [ExitStatus; 12] = [
            ExitStatus::Success,
            ExitStatus::CheckFailed,
            ExitStatus::Usage,
            ExitStatus::InvalidValue,
            ExitStatus::NotFound,
            ExitStatus::Unavailable,
            ExitStatus::Internal,
            ExitStatus::CannotWrite,
            ExitStatus::OutputFailed,
            ExitStatus::Locked,
            ExitStatus::Denied,
            ExitStatus::Configuration,
        ];
        ALL.into_iter()
            .find(|status| status.code() == code)
            .unwrap_or(ExitStatus::Internal)
    }

    /// Maps a store error to the status an operator acts on.
    pub fn of_backend(error: &BackendError) -> Self {
        match error {
            BackendError::Authentication { .. } | BackendError::PermissionDenied { .. } => {
                ExitStatus::Denied
            }
            BackendError::NotFound { .. } => ExitStatus::NotFound,
            BackendError::Unavailable { .. } => ExitStatus::Unavailable,
            BackendError::InvalidResponse { .. } => ExitStatus::InvalidValue,
            BackendError::Configuration { .. } => ExitStatus::Configuration,
        }
    }
}

/// The exit status table shown by `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0   every file written (fetch) or every check passed
  1   a check answered no (a key does not open the database)
  64  invalid command line
  65  a value failed validation (empty key, bcrypt hash as password, bad base64)
  66  a secret, version or JSON field was not found
  69  the store stayed unavailable until the deadline
  70  internal error
  73  a target file cannot be written safely (not tmpfs, symlink, directory, permissions)
  74  the report could not be written to standard output
  75  a database file is locked by another process (Portainer is running)
  77  authentication failed or access was denied
  78  the configuration is invalid";
