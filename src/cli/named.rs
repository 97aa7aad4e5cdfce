//! Clap's view of the library's named options (`crate::named`): `--help` lists each value with
//! its help line, and a bad value is refused with the list of valid ones.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::named::{parse, Named};

/// The value parser of a flag whose values are `T`'s names.
pub fn named<T: Named + Send + Sync>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|v| {
        PossibleValue::new(v.name())
            .help(v.help())
            .aliases(v.aliases().iter().copied())
    });
    PossibleValuesParser::new(values).try_map(|name| parse::<T>(&name))
}
