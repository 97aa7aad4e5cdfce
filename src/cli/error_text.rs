//! How the command line words errors: the library names a refused setting (`block_length`), the
//! command line the flag that sets it (`--block-length`).

use crate::error::Error;

/// The flag that sets a library setting.
pub fn flag(setting: &str) -> String {
    format!("--{}", setting.replace('_', "-"))
}

/// The error chain as one line, each cause after the one it caused (as anyhow's `{:#}`), with
/// settings written as flags.
pub fn describe_error(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<Error>() {
            Some(Error::InvalidOption(msg)) => msg.render(flag),
            _ => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_flags_inside_the_chain() {
        let e = anyhow::Error::from(Error::option("block_length", "must be at least 1"))
            .context("request 0");
        assert_eq!(
            describe_error(&e),
            "request 0: --block-length must be at least 1"
        );
        assert_eq!(describe_error(&anyhow::anyhow!("plain")), "plain");
    }
}
