//! Registry credentials: from the environment, else from the docker
//! configuration (`~/.docker/config.json` or `$DOCKER_CONFIG`, credential
//! helpers included), else anonymous.

use oci_client::secrets::RegistryAuth;

/// Environment variable holding the registry user name.
pub const USERNAME_ENV: &str = "WASMTWIN_REGISTRY_USERNAME";
/// Environment variable holding the registry password or token.
pub const PASSWORD_ENV: &str = "WASMTWIN_REGISTRY_PASSWORD";

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// The environment, then the docker configuration.
    #[default]
    Discover,
    /// These.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

impl Credentials {
    /// The authentication to use for `registry` (`host[:port]`).
    pub fn resolve(&self, registry: &str) -> RegistryAuth {
        match self {
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Discover => {
                if let (Ok(user), Ok(pass)) =
                    (std::env::var(USERNAME_ENV), std::env::var(PASSWORD_ENV))
                {
                    return RegistryAuth::Basic(user, pass);
                }
                match docker_credential::get_credential(registry) {
                    Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => {
                        RegistryAuth::Basic(user, pass)
                    }
                    Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                        RegistryAuth::Bearer(token)
                    }
                    Err(_) => RegistryAuth::Anonymous,
                }
            }
        }
    }
}
