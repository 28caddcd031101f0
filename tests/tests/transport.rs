//! One transport policy for every store: Vault (OpenBao behind a TLS front), AWS
//! (moto behind a TLS front), Azure and GCP (the HTTPS doubles) all trust `ca_cert`,
//! tunnel through `HTTPS_PROXY` or `proxy_url`, and bypass it for `NO_PROXY` hosts.

use std::path::{Path, PathBuf};

use integration_tests::config::{azure_store, gcp_store, secret};
use integration_tests::moto::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use integration_tests::{
    Agent, AgentOutput, ConnectProxy, EntraKeyVault, Expected, GoogleSecretManager, Moto, OpenBao,
    TestCa, TlsFront, Tmpfs, assert_file, write_config,
};
use serde_json::json;
use tempfile::TempDir;

/// Every store, each with one secret, reached over HTTPS on 127.0.0.1.
struct FourStores {
    _bao: OpenBao,
    _moto: Moto,
    front_ca: TestCa,
    vault_front: TlsFront,
    aws_front: TlsFront,
    keyvault: EntraKeyVault,
    google: GoogleSecretManager,
    vault_token_file: PathBuf,
    azure_token_file: PathBuf,
    gcp_credentials: PathBuf,
    tmpfs: Tmpfs,
    dir: TempDir,
}

/// Names of the stores, their secret values and target file names.
const STORES: [(&str, &[u8]); 4] = [
    ("vault", b"pka-transport-vault"),
    ("aws", b"pka-transport-aws"),
    ("azure", b"pka-transport-azure"),
    ("gcp", b"pka-transport-gcp"),
];

impl FourStores {
    fn start() -> Self {
        let dir = TempDir::new().expect("temporary directory");
        let bao = OpenBao::start();
        bao.kv2_put(
            "secret",
            "portainer/db",
            &json!({ "key": "pka-transport-vault" }),
        );
        let vault_token_file = dir.path().join("vault-token");
        std::fs::write(&vault_token_file, bao.root_token()).expect("write Vault token");

        let moto = Moto::start();
        moto.create_secret_string("portainer/db", "pka-transport-aws");

        let front_ca = TestCa::create();
        let vault_front = TlsFront::start(bao.address(), &front_ca);
        let aws_front = TlsFront::start(moto.url(), &front_ca);

        let keyvault = EntraKeyVault::start();
        keyvault.add_version("portainer-db", "pka-transport-azure");
        let azure_token_file = dir.path().join("azure-token");
        std::fs::write(&azure_token_file, keyvault.federated_token(3600)).expect("write token");

        let google = GoogleSecretManager::start();
        google.add_version("portainer-db", b"pka-transport-gcp");
        let gcp_token_file = dir.path().join("gcp-token");
        std::fs::write(&gcp_token_file, google.subject_token(3600)).expect("write token");
        let gcp_credentials = google.credential_configuration(&gcp_token_file, false);

        Self {
            _bao: bao,
            _moto: moto,
            front_ca,
            vault_front,
            aws_front,
            keyvault,
            google,
            vault_token_file,
            azure_token_file,
            gcp_credentials,
            tmpfs: Tmpfs::mount(),
            dir,
        }
    }

    /// Returns the `host:port` each store is reached at, as a CONNECT target.
    fn authorities(&self) -> Vec<(&'static str, String)> {
        let authority = |url: &str| {
            url.trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned()
        };
        vec![
            ("vault", authority(self.vault_front.url())),
            ("aws", authority(self.aws_front.url())),
            ("azure", authority(self.keyvault.url())),
            ("gcp", authority(self.google.url())),
        ]
    }

    /// Writes a configuration with the stores in `only` (all when empty); `extra`
    /// is added to every store table, and `with_ca` adds each store's CA.
    fn config(&self, only: &[&str], extra: &str, with_ca: bool) -> PathBuf {
        let ca_line = |ca: &Path| {
            if with_ca {
                format!("ca_cert = \"{}\"\n", ca.display())
            } else {
                String::new()
            }
        };
        let front_ca = ca_line(&self.front_ca.ca_file());
        let wanted = |name: &str| only.is_empty() || only.contains(&name);
        let mut text = String::from("deadline_seconds = 3\n");

        if wanted("vault") {
            text.push_str(&format!(
                "[stores.vault]\ntype = \"vault\"\naddress = \"{}\"\nkv_version = 2\n{front_ca}{extra}\n\
                 connect_timeout_seconds = 2\nrequest_timeout_seconds = 5\n\
                 [stores.vault.auth]\nmethod = \"token-file\"\npath = \"{}\"\n",
                self.vault_front.url(),
                self.vault_token_file.display()
            ));
        }
        if wanted("aws") {
            text.push_str(&format!(
                "[stores.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{front_ca}{extra}\n",
                self.aws_front.url()
            ));
        }
        if wanted("azure") {
            let lines = format!("{}{extra}", ca_line(&self.keyvault.ca().ca_file()));
            text.push_str(&azure_store(
                "azure",
                self.keyvault.url(),
                &self.azure_token_file,
                &lines,
            ));
        }
        if wanted("gcp") {
            let lines = format!("{}{extra}", ca_line(&self.google.ca().ca_file()));
            text.push_str(&gcp_store(
                "gcp",
                self.google.url(),
                &self.gcp_credentials,
                &lines,
            ));
        }

        for (name, _) in STORES.iter().filter(|(name, _)| wanted(name)) {
            let path = match *name {
                "vault" => "secret/portainer/db",
                "aws" => "portainer/db",
                _ => "portainer-db",
            };
            let field = if *name == "vault" {
                "field = \"key\""
            } else {
                ""
            };
            text.push_str(&secret(
                name,
                "generic",
                name,
                path,
                &self.tmpfs.join(name),
                field,
            ));
        }
        write_config(self.dir.path(), &text)
    }

    fn run(&self, agent: Agent) -> AgentOutput {
        agent
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .run()
    }

    fn assert_every_file_written(&self) {
        for (name, value) in STORES {
            assert_file(&self.tmpfs.join(name), Expected::default_owner(value));
        }
    }
}

#[test]
fn ca_cert_is_trusted_by_every_store() {
    let stores = FourStores::start();

    let output = stores.run(Agent::fetch(&stores.config(&[], "", true)));

    output.assert_exit(0);
    stores.assert_every_file_written();
}

#[test]
fn every_store_rejects_an_unknown_ca() {
    let stores = FourStores::start();

    for (name, _) in STORES {
        let output = stores.run(Agent::fetch(&stores.config(&[name], "", false)));

        output.assert_exit(69);
        assert!(
            output.log().to_lowercase().contains("certificate"),
            "{name}: the log does not name the certificate problem:\n{}",
            output.log()
        );
    }
}

#[test]
fn https_proxy_carries_every_store() {
    let stores = FourStores::start();
    let proxy = ConnectProxy::start();

    let output = stores.run(
        Agent::fetch(&stores.config(&[], "", true))
            .env("HTTPS_PROXY", proxy.url())
            .env("NO_PROXY", "proxy-bypass.invalid"),
    );

    output.assert_exit(0);
    stores.assert_every_file_written();
    let targets = proxy.targets();
    for (name, authority) in stores.authorities() {
        assert!(
            targets.contains(&authority),
            "{name} ({authority}) did not go through the proxy; targets: {targets:?}\n{}",
            proxy.output()
        );
    }
}

#[test]
fn no_proxy_bypasses_the_proxy() {
    let stores = FourStores::start();
    let proxy = ConnectProxy::start();

    let output = stores.run(
        Agent::fetch(&stores.config(&[], "", true))
            .env("HTTPS_PROXY", proxy.url())
            .env("NO_PROXY", "localhost,127.0.0.1"),
    );

    output.assert_exit(0);
    stores.assert_every_file_written();
    assert_eq!(proxy.targets(), Vec::<String>::new());
}

#[test]
fn proxy_url_replaces_the_environment() {
    let stores = FourStores::start();
    let proxy = ConnectProxy::start();
    let extra = format!(
        "proxy_url = \"{}\"\nno_proxy = \"proxy-bypass.invalid\"\n",
        proxy.url()
    );

    // The environment's proxy is a closed port: only the configured one works.
    let output = stores.run(
        Agent::fetch(&stores.config(&[], &extra, true))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1"),
    );

    output.assert_exit(0);
    stores.assert_every_file_written();
    let targets = proxy.targets();
    for (name, authority) in stores.authorities() {
        assert!(
            targets.contains(&authority),
            "{name} ({authority}) ignored proxy_url; targets: {targets:?}"
        );
    }
}
