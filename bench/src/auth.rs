//! `--user name[:password]`: the password is prompted for on the terminal when absent,
//! as etcd's tool does.

use crate::client::BoxError;

pub fn credentials(user: &str) -> Result<(String, String), BoxError> {
    match user.split_once(':') {
        Some((name, password)) => Ok((name.to_string(), password.to_string())),
        None => {
            let password = rpassword::prompt_password("Password: ")
                .map_err(|e| format!("bad user information: {user} {e}"))?;
            Ok((user.to_string(), password))
        }
    }
}
