//! Reading flag values, shared by the example binaries: each problem is a
//! one-line message naming the flag.

use crate::widgets::NAMES;

pub fn text(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let value = parser
        .value()
        .map_err(|_| format!("{flag} needs a value"))?;
    value
        .into_string()
        .map_err(|v| format!("{flag}: {v:?} is not valid UTF-8"))
}

pub fn positive<N: std::str::FromStr + PartialOrd + Default>(
    parser: &mut lexopt::Parser,
    flag: &str,
) -> Result<N, String> {
    let value = text(parser, flag)?;
    match value.parse::<N>() {
        Ok(n) if n > N::default() => Ok(n),
        _ => Err(format!(
            "{flag} takes a positive whole number, not {value:?}"
        )),
    }
}

pub fn widget(parser: &mut lexopt::Parser, flag: &str) -> Result<&'static str, String> {
    let value = text(parser, flag)?;
    NAMES
        .iter()
        .find(|name| **name == value)
        .copied()
        .ok_or_else(|| {
            format!(
                "{flag}: unknown widget {value:?}; expected one of {}",
                NAMES.join(", ")
            )
        })
}
