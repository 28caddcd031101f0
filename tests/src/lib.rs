//! Test harness: starts OpenBao, moto and the test doubles on 127.0.0.1, prepares
//! tmpfs and disk-backed directories, and runs the agent binary with a clean
//! environment.
//!
//! Every server helper returns a guard that kills and reaps the process on drop.
//! Python tools come from `<repo>/.venv`, which `tests/setup-venv` creates; a
//! missing tool fails the test with that instruction instead of skipping it.

pub mod agent;
pub mod checks;
pub mod cloud;
pub mod config;
pub mod doubles;
pub mod fs;
pub mod http;
pub mod jwt;
pub mod moto;
pub mod openbao;
pub mod paths;
pub mod process;

pub use agent::{Agent, AgentOutput, write_config};
pub use checks::{Expected, assert_absent, assert_file, assert_log_free_of};
pub use cloud::{ConnectProxy, EntraKeyVault, GoogleSecretManager, TestCa, TlsFront};
pub use doubles::{PodIdentity, ServiceAccount, TokenReview};
pub use fs::{DiskDir, FileFacts, Tmpfs};
pub use moto::Moto;
pub use openbao::{KvVersion, OpenBao};
