//! Who the client and `dirkdb bench` say they are when a part requires authentication.
//!
//! `--user` names the user; the password comes from `DIRKDB_PASSWORD`, `--password-file` (its
//! first line, as `security.clusterPasswordFile`), `--password` (visible to other users in `ps`;
//! for throwaway benchmarks), or a prompt without echo when standard input is a terminal. Every
//! connection — the first and each reconnection — then starts with `AUTH`.

use std::io::IsTerminal;
use std::path::PathBuf;

use dirkdb_core::security::{read_password_file, Credentials};

/// The credential options shared by `dirkdb client` and `dirkdb bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialArgs {
    /// Authenticate as this user (parts with security.requireAuth).
    #[arg(long, short = 'u', value_name = "NAME", env = "DIRKDB_USER")]
    pub user: Option<String>,
    /// The password (others on the machine can see it in `ps`: prefer DIRKDB_PASSWORD,
    /// --password-file or the prompt).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "DIRKDB_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
}

/// Why no credentials could be made of the options.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A password was given without `--user`.
    #[error("a password was given without --user (or DIRKDB_USER)")]
    NoUser,
    /// No password was given and there is no terminal to ask on.
    #[error("--user {0} needs a password: DIRKDB_PASSWORD, --password-file or --password (standard input is not a terminal to ask on)")]
    NoPassword(String),
    /// The password file or the prompt failed.
    #[error("{0}")]
    Read(String),
}

impl CredentialArgs {
    /// The credentials to present, `None` when no user is named.
    pub fn resolve(&self) -> Result<Option<Credentials>, CredentialError> {
        let Some(user) = self.user.clone() else {
            return match self.password.is_some() || self.password_file.is_some() {
                true => Err(CredentialError::NoUser),
                false => Ok(None),
            };
        };
        let password = match (&self.password, &self.password_file) {
            (Some(password), _) => password.clone(),
            (None, Some(path)) => {
                read_password_file(path).map_err(|e| CredentialError::Read(e.to_string()))?
            }
            (None, None) if std::io::stdin().is_terminal() => {
                rpassword::prompt_password(format!("Password for {user}: "))
                    .map_err(|e| CredentialError::Read(format!("cannot read the password: {e}")))?
            }
            (None, None) => return Err(CredentialError::NoPassword(user)),
        };
        Ok(Some(Credentials { user, password }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_user_means_no_credentials_and_a_stray_password_is_refused() {
        assert!(matches!(CredentialArgs::default().resolve(), Ok(None)));
        let stray = CredentialArgs {
            password: Some("x".into()),
            ..Default::default()
        };
        assert!(matches!(stray.resolve(), Err(CredentialError::NoUser)));
    }

    #[test]
    fn the_password_file_gives_its_first_line() {
        let dir = std::env::temp_dir().join(format!("dirkdb-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let args = CredentialArgs {
            user: Some("app".into()),
            password_file: Some(file),
            ..Default::default()
        };
        let creds = args.resolve().unwrap().unwrap();
        assert_eq!(
            (creds.user.as_str(), creds.password.as_str()),
            ("app", "s3cret")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
