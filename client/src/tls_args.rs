//! `--tls`, `--ca`, `--cert`, `--key` and `--server-name` of `dirkdb client` and `dirkdb bench`:
//! connect in TLS, checking the server's certificate against `--ca` (the public roots without
//! it) and the host connected to (or `--server-name`), presenting a client certificate when
//! given (a node certificate, for parts with `security.tls.mutualTls`).

use std::path::PathBuf;

use dirkdb_core::tls::{use_client_tls, TlsClient, TlsError};

/// The TLS options shared by `dirkdb client` and `dirkdb bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Connect with TLS (parts with security.tls); the server's certificate must be signed by
    /// --ca (else by a public root) and name the host connected to.
    #[arg(long)]
    pub tls: bool,
    /// The CA certificates (PEM) the server's certificate is checked against; implies --tls.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, with --key; implies --tls.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it does not name the host connected
    /// to (security.tls.serverName of the parts); implies --tls.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// True when connections are to be made in TLS.
    pub fn enabled(&self) -> bool {
        self.tls || self.ca.is_some() || self.cert.is_some() || self.server_name.is_some()
    }

    /// Makes every connection of this process use these options; the error names the option.
    pub fn apply(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        let mut client = TlsClient::new(self.ca.as_deref(), identity).map_err(option_error)?;
        if let Some(name) = &self.server_name {
            client = client.with_server_name(name).map_err(option_error)?;
        }
        use_client_tls(Some(client));
        Ok(())
    }
}

fn option_error(e: TlsError) -> String {
    let option = match e.field {
        "certFile" => "--cert",
        "keyFile" => "--key",
        "serverName" => "--server-name",
        _ => "--ca",
    };
    format!("{option}: {}", e.problem)
}
