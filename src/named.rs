//! Options whose values users type by name (a flag's value, a request field). Each value has one
//! name, printed by `Display` and read back by `FromStr`, so the library needs no command-line
//! crate and every front end (the CLI through clap, the server through serde) accepts the same
//! spellings.

use crate::error::{Error, Result};

/// An option with a fixed set of named values.
pub trait Named: Copy + 'static {
    /// What the option is called in messages ("sampler").
    const WHAT: &'static str;
    /// Every value, in the order lists show them.
    const ALL: &'static [Self];
    /// The name users type.
    fn name(self) -> &'static str;
    /// One line on what the value means, for help texts.
    fn help(self) -> &'static str;
    /// Other spellings accepted for the value (not listed in help), e.g. a reference's own.
    fn aliases(self) -> &'static [&'static str] {
        &[]
    }
}

/// The value called `name`; the error lists the valid names.
pub fn parse<T: Named>(name: &str) -> Result<T> {
    T::ALL
        .iter()
        .copied()
        .find(|v| v.name() == name || v.aliases().contains(&name))
        .ok_or_else(|| {
            let names: Vec<&str> = T::ALL.iter().map(|v| v.name()).collect();
            Error::Input(format!(
                "unknown {} {name:?}; expected one of: {}",
                T::WHAT,
                names.join(", ")
            ))
        })
}

/// `Display` (the name) and `FromStr` (by name, through [`parse`]) for a [`Named`] type.
macro_rules! display_and_from_str {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::named::Named::name(*self))
            }
        }

        impl std::str::FromStr for $t {
            type Err = $crate::error::Error;

            fn from_str(s: &str) -> $crate::error::Result<Self> {
                $crate::named::parse(s)
            }
        }
    };
}
pub(crate) use display_and_from_str;
